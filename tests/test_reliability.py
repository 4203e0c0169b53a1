"""Reliability (issue 6): crashes, bad input, tampered files, a dying process (non-finite steps:
test_nonfinite.py).

Faults are injected for real: SIGKILL on training subprocesses, pickles that would run code, a full
disk, a killed rank.
"""
import builtins
import json
import os
import pickle
import random
import re
import signal
import shutil
import subprocess
import sys
import time
import types
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from cgan.train import recovery
from cgan.core.errors import CheckpointError
from cgan.train.checkpoint import (list_checkpoints, load_training_state, remove_stale_temporaries,
                             resolve_resume, save_training_state)
from cgan.cli import sample_main, train_main
from cgan.core.config import ConfigError, TextConfig, load_config
from cgan.pipeline import CGANPipeline
from cgan.condition.text_encoder import FrozenTextEncoder
from cgan.train.loop import train
from conftest import TINY, two_process_command



def tiny_modules():
    torch.manual_seed(0)
    modules = {"G": torch.nn.Linear(3, 2), "D": torch.nn.Linear(2, 1), "G_ema": torch.nn.Linear(3, 2)}
    optimizers = {"opt_G": torch.optim.Adam(modules["G"].parameters()),
                  "opt_D": torch.optim.Adam(modules["D"].parameters())}
    return modules, optimizers


def save_state(run, step, modules, optimizers, keep_last=5):
    return save_training_state(run, step=step, images_seen=8 * step, modules=modules, optimizers=optimizers,
                               rng_states=[{"cpu": torch.get_rng_state()}], keep_last=keep_last)


# ----------------------------------------------------------------------------------------------
# Crash-safe checkpoints


def test_partial_folders_are_never_resumed_and_leftovers_are_cleared(tmp_path):
    run = tmp_path / "run"
    modules, optimizers = tiny_modules()
    save_state(run, 1, modules, optimizers)
    complete = save_state(run, 2, modules, optimizers)
    # What SIGKILL leaves: a half-written state, a step folder without state.json (copied by hand, say),
    # a half-written model, a model being replaced (between the two renames), a half-written sample grid.
    partial = run / "checkpoints" / "step_00000003.tmp-4242"
    partial.mkdir()
    (partial / "G.safetensors").write_bytes((complete / "G.safetensors").read_bytes()[:100])
    stateless = run / "checkpoints" / "step_00000004"
    stateless.mkdir()
    (stateless / "G.safetensors").write_bytes((complete / "G.safetensors").read_bytes())
    (run / "model.tmp-4242").mkdir()
    (run / "model.old-4242").mkdir()
    (run / "model.old-4242" / "config.json").write_text("{}")
    (run / "samples").mkdir()
    (run / "samples" / "step_00000003.png.tmp-4242").write_bytes(b"\x89PNG")

    assert resolve_resume(run, "latest") == complete
    actions = remove_stale_temporaries(run)
    assert actions == [f"restored {run / 'model'} from model.old-4242, left by a run that was killed",
                       f"removed {run / 'model.tmp-4242'}, left by a run that was killed",
                       f"removed {partial}, left by a run that was killed",
                       f"removed {run / 'samples' / 'step_00000003.png.tmp-4242'}, left by a run that was killed"]
    assert (run / "model" / "config.json").is_file() and stateless.is_dir()  # not ours to judge: left alone
    assert not list(run.rglob("*.tmp-*")) and not list(run.rglob("*.old-*"))
    assert resolve_resume(run, "latest") == complete
    with pytest.raises(CheckpointError, match="not a training state folder"):
        resolve_resume(run, str(stateless))


def test_keep_last_prunes_only_after_the_newer_state_is_complete(tmp_path, monkeypatch):
    import cgan.train.checkpoint as checkpoint

    run = tmp_path / "run"
    modules, optimizers = tiny_modules()
    save_state(run, 1, modules, optimizers, keep_last=1)
    save_state(run, 2, modules, optimizers, keep_last=1)
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002"]
    seen_at_publish = []
    real_publish = checkpoint.publish_folder

    def publish(tmp, final):
        seen_at_publish.append(([p.name for p in list_checkpoints(run)], sorted(p.name for p in tmp.iterdir())))
        real_publish(tmp, final)

    monkeypatch.setattr(checkpoint, "publish_folder", publish)
    save_state(run, 3, modules, optimizers, keep_last=1)
    assert seen_at_publish == [(["step_00000002"], ["D.safetensors", "G.safetensors", "G_ema.safetensors",
                                                    "optimizers.pt", "rng.pt", "state.json"])]
    assert [p.name for p in list_checkpoints(run)] == ["step_00000003"]

    # A write that fails partway (a full disk): its temporary folder goes, and nothing is pruned.
    real_save = checkpoint.torch.save

    def full_disk(obj, path):
        if path.name == "rng.pt":
            raise OSError(28, "No space left on device")
        real_save(obj, path)

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"step_00000004: could not write the training state \(\[Errno 28\] "
                                              r"No space left on device\); the newest complete state, .*"
                                              r"step_00000003, is intact. Free disk space"):
        save_state(run, 4, modules, optimizers, keep_last=1)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000003"]


SLOW_SAVE_TRAIN = """
import sys, time
import cgan.train.checkpoint as checkpoint
real = checkpoint.save_weights
def slow(*args, **kwargs):  # widens the window in which a checkpoint is half-written
    time.sleep(0.1)
    real(*args, **kwargs)
checkpoint.save_weights = slow
from cgan.cli import train_main
raise SystemExit(train_main(sys.argv[1:]))
"""


def newest_step(run):
    states = list_checkpoints(run)
    return int(states[-1].name[5:]) if states else 0


def logged_steps(run):
    if not (run / "metrics.jsonl").is_file():
        return [0]
    return [0] + [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
                  if line.endswith("}")]


def wait_for(condition, process, timeout=600.0, interval=0.005):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the training process ended early (exit {process.returncode})"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(interval)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_latest(tmp_path, cache_dir):
    run, total = tmp_path / "run", 12
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(6)
    base = [sys.executable, "-c", SLOW_SAVE_TRAIN, "--config", TINY, "--out", str(run),
            f"data.cache_dir={cache_dir}", "data.num_images=64", f"train.total_steps={total}", "train.checkpoint_every=1",
            "train.log_every=1", "train.sample_every=1000"]
    resumed_from, outputs = [], []
    for attempt in range(4):
        log = tmp_path / f"attempt{attempt}.log"
        with log.open("w") as handle:
            process = subprocess.Popen(base + (["--resume", "latest"] if attempt else []), env=env, cwd=tmp_path,
                                       stdout=handle, stderr=subprocess.STDOUT)
            try:
                if attempt == 0:  # killed while a checkpoint is half-written
                    wait_for(lambda: list((run / "checkpoints").glob("*.tmp-*")), process)
                elif attempt < 3:  # killed at a random moment once it has made progress
                    start = newest_step(run)
                    wait_for(lambda: newest_step(run) > start, process)
                    time.sleep(rng.uniform(0.0, 0.8))
                else:
                    assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
                if attempt < 3:
                    assert process.poll() is None, "finished before it could be killed"
                    process.send_signal(signal.SIGKILL)
                    process.wait(timeout=30)
            finally:
                if process.poll() is None:
                    process.kill()
        outputs.append(log.read_text())
        if attempt == 0:
            assert list((run / "checkpoints").glob("*.tmp-*")), "the kill did not land inside a checkpoint write"
        if attempt:  # from the newest complete state, never a partial one
            assert (f"resumed from {run / 'checkpoints' / f'step_{resumed_from[-1]:08d}'} at step {resumed_from[-1]}"
                    if resumed_from[-1] else "no checkpoint in") in outputs[-1]
        if attempt < 3:
            # At most one checkpoint interval (1 step) is lost: the last logged step vs what a resume gets.
            assert max(logged_steps(run)) - newest_step(run) <= 1
            resumed_from.append(newest_step(run))
    assert "left by a run that was killed" in outputs[1]
    assert resumed_from == sorted(resumed_from)
    assert json.loads((run / "checkpoints" / f"step_{total:08d}" / "state.json").read_text())["step"] == total
    assert not list(run.rglob("*.tmp-*")) and not list(run.rglob("*.old-*"))
    images = CGANPipeline.from_pretrained(run / "model").generate_tensor("a red circle", {"style": "flat"}, 2)
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()


# ----------------------------------------------------------------------------------------------
# Bad input, failing early


class DiskUsage:
    """shutil.disk_usage with `free` bytes from the given list, one per call on the run folder `run` (the
    last one repeats). Other paths get the real answer: the image cache asks about the cache folder when it
    builds, which happens in whichever test first trains on a fresh machine (it did under pytest-xdist)."""

    def __init__(self, run, *free):
        self.run, self.free, self.calls = Path(run), list(free), 0
        self.real = shutil.disk_usage

    def __call__(self, path):
        if Path(path) != self.run:
            return self.real(path)
        self.calls += 1
        free = self.free[min(self.calls, len(self.free)) - 1]
        return types.SimpleNamespace(total=2 ** 40, used=2 ** 40 - free, free=free)


def test_not_enough_disk_fails_before_the_first_step(config, tmp_path, minilm, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr(recovery.shutil, "disk_usage", DiskUsage(run, 2 ** 20))
    with pytest.raises(ConfigError, match=rf"--out {re.escape(str(run))}: 1 MiB free, but a checkpoint and an "
                                          r"exported model need about \d+ MiB$"):
        train(config, run, text_encoder=minilm)
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()


def test_disk_filling_up_during_training_stops_before_a_write(config, tmp_path, minilm, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr(recovery.shutil, "disk_usage", DiskUsage(run, 2 ** 40, 2 ** 40, 2 ** 20))  # full at step 4
    newest = re.escape(str(run / "checkpoints" / "step_00000002"))
    with pytest.raises(ConfigError, match=rf"1 MiB free.*the newest complete state is {newest}, continue with "
                                          "--resume latest"):
        train(config, run, text_encoder=minilm)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000002"]
    monkeypatch.undo()
    train(config, run, resume="latest", text_encoder=minilm)
    assert newest_step(run) == 4


def test_unsupported_resolution_is_named(tmp_path, capsys):
    for resolution in (48, 1024):
        with pytest.raises(ConfigError, match=f"data.resolution: expected one of 32, 64, 128, 256, got {resolution}"):
            load_config(TINY, [f"data.resolution={resolution}"])
    assert train_main(["--config", TINY, "--out", str(tmp_path / "run"), "data.resolution=1024"]) == 2
    assert "error: data.resolution: expected one of 32, 64, 128, 256, got 1024" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------
# Safe loading


class WritesAFile:
    """Unpickling this calls open(marker, "w"): arbitrary code, if a loader lets it run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["optimizers.pt", "rng.pt"])
def test_a_tampered_pickle_is_refused_and_never_runs(tmp_path, name):
    run, marker = tmp_path / "run", tmp_path / "pwned"
    modules, optimizers = tiny_modules()
    folder = save_state(run, 1, modules, optimizers)
    payload = {"opt_G": WritesAFile(marker), "opt_D": {}} if name == "optimizers.pt" else {"rng": [WritesAFile(marker)]}
    torch.save(payload, folder / name)
    with pytest.raises(CheckpointError, match=f"{folder}: optimizers.pt or rng.pt unreadable .*not written by cgan"):
        load_training_state(folder, modules=modules, optimizers=optimizers)
    assert not marker.exists()
    pickle.loads(pickle.dumps(WritesAFile(marker))).close()  # the payload is live: an unsafe load runs it
    assert marker.exists()


def test_damaged_or_foreign_training_states_are_refused(tmp_path, config, minilm):
    run = tmp_path / "run"
    train(config, run, max_steps=2, text_encoder=minilm)
    folder = run / "checkpoints" / "step_00000002"
    weights = folder / "G.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{weights}: not a readable safetensors file"):
        train(config, run, resume="latest", text_encoder=minilm)
    weights.write_bytes(data)
    state = json.loads((folder / "state.json").read_text())
    (folder / "state.json").write_text(json.dumps({**state, "format_version": 99}))
    with pytest.raises(CheckpointError, match="training state format 99; this cgan reads format 1"):
        train(config, run, resume="latest", text_encoder=minilm)
    (folder / "state.json").write_text(json.dumps(state))
    cond_dim = config.model.conditioner.cond_dim
    config.model.conditioner.cond_dim = 64
    with pytest.raises(ConfigError, match=rf"config.yaml: this run was trained with model.conditioner.cond_dim={cond_dim} "
                                          r"\(now 64\)"):
        train(config, run, resume="latest", text_encoder=minilm)
    d = config.model.discriminator
    pool_first = d.pool_first
    config.model.conditioner.cond_dim, d.pool_first = cond_dim, not pool_first  # same shapes: only config.yaml tells
    with pytest.raises(ConfigError, match=rf"model.discriminator.pool_first={pool_first} \(now {not pool_first}\); the "
                                          "model cannot"):
        train(config, run, resume="latest", text_encoder=minilm)
    (run / "config.yaml").unlink()  # without the run's config, the weights themselves refuse a changed shape
    config.model.conditioner.cond_dim, d.pool_first = 64, pool_first
    with pytest.raises(CheckpointError, match="weights do not fit this model"):
        train(config, run, resume="latest", text_encoder=minilm)


def test_the_fp16_grad_scaler_is_saved_and_restored(tmp_path):
    run = tmp_path / "run"
    modules, optimizers = tiny_modules()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    folder = save_state(run, 1, modules, {**optimizers, "scaler": scaler})
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    load_training_state(folder, modules=modules, optimizers={**optimizers, "scaler": fresh})
    assert fresh.get_scale() == 1024.0
    older = save_state(run, 2, modules, optimizers)  # a state without one still loads; the scale recalibrates
    load_training_state(older, modules=modules, optimizers={**optimizers, "scaler": fresh})


def test_remote_code_runs_only_when_asked(tmp_path, monkeypatch):
    import inspect

    assert TextConfig().trust_remote_code is False
    assert inspect.signature(FrozenTextEncoder).parameters["trust_remote_code"].default is False
    seen = []

    def from_pretrained(model, **kwargs):
        seen.append(kwargs["trust_remote_code"])
        raise CheckpointError("stop here")

    monkeypatch.setattr(CGANPipeline, "from_pretrained", from_pretrained)
    assert sample_main(["--model", str(tmp_path), "--prompt", "x"]) == 2
    assert sample_main(["--model", str(tmp_path), "--prompt", "x", "--trust-remote-code"]) == 2
    assert seen == [False, True]


# ----------------------------------------------------------------------------------------------
# Several processes


def test_the_process_group_gets_the_configured_timeout(config, tmp_path, minilm, monkeypatch):
    import accelerate

    seen = []

    class Stop(Exception):
        pass

    def accelerator(**kwargs):
        seen.append(kwargs)
        raise Stop

    monkeypatch.setattr(accelerate, "Accelerator", accelerator)
    config.train.dist_timeout_s = 42
    with pytest.raises(Stop):
        train(config, tmp_path / "run", text_encoder=minilm)
    (handler,) = seen[0]["kwargs_handlers"]
    assert handler.timeout == timedelta(seconds=42)


@pytest.mark.slow
def test_a_killed_rank_ends_the_run_with_a_message(tmp_path, cache_dir):
    run = tmp_path / "run"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    log = tmp_path / "launch.log"
    with log.open("w") as handle:
        launcher = subprocess.Popen(two_process_command(run, f"data.cache_dir={cache_dir}", "data.num_images=64",
                                                        "train.total_steps=100000", "train.log_every=1"),
                                    env=env, cwd=tmp_path, stdout=handle, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: (run / "metrics.jsonl").is_file(), launcher, timeout=300, interval=0.2)
            workers = {}
            for pid in os.listdir("/proc"):
                try:
                    if pid.isdigit() and int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1]) \
                            == launcher.pid:
                        environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
                        rank = [e[5:].decode() for e in environ if e.startswith(b"RANK=")]
                        workers[int(rank[0])] = int(pid)
                except (OSError, IndexError, ValueError):
                    continue  # a process that ended meanwhile, or not a worker
            assert sorted(workers) == [0, 1], workers
            os.kill(workers[1], signal.SIGKILL)
            start = time.monotonic()
            code = launcher.wait(timeout=120)
            took = time.monotonic() - start
        finally:
            if launcher.poll() is None:
                launcher.kill()
    out = log.read_text()
    assert code != 0, out[-3000:]
    assert "Root Cause" in out and re.search(r"rank\s*: 1 \(local_rank: 1\)", out) and "SIGKILL" in out, out[-3000:]
    assert took < 120
