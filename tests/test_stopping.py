"""Ending a run when the user wants: Ctrl-C / SIGTERM and a time budget leave a checkpoint and a model."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cgan.train.checkpoint import list_checkpoints
from cgan.core.config import ConfigError, load_config
from cgan.train.loop import train
from conftest import ROOT, TINY


@pytest.mark.slow
@pytest.mark.parametrize("signum, whole_group", [(signal.SIGINT, False), (signal.SIGTERM, False),
                                                (signal.SIGTERM, True)])
def test_a_signal_mid_run_saves_a_checkpoint_and_model_then_exits_0(tmp_path, cache_dir, signum, whole_group):
    """whole_group: the signal reaches the data loader's worker too, as from `timeout`, `docker stop` or a scheduler."""
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", TINY, "--out", str(run), f"data.cache_dir={cache_dir}",
           "data.num_images=64", "train.total_steps=100000", "train.checkpoint_every=100000", "train.log_every=1",
           "train.sample_every=100000", "data.num_workers=1"]
    log = tmp_path / "log"
    with log.open("w") as handle:
        process = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not (run / "metrics.jsonl").is_file() or len((run / "metrics.jsonl").read_text().splitlines()) < 2:
                assert process.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "training did not start"
                time.sleep(0.2)
            if whole_group:
                os.killpg(process.pid, signum)
            else:
                process.send_signal(signum)
            assert process.wait(timeout=120) == 0, log.read_text()[-3000:]
        finally:
            if process.poll() is None:
                process.kill()
    output = log.read_text()
    [checkpoint] = list_checkpoints(run)  # the only checkpoint is the one the signal asked for
    step = json.loads((checkpoint / "state.json").read_text())["step"]
    assert f"stopped at step {step} ({signal.Signals(signum).name})" in output and "--resume latest" in output
    assert json.loads((run / "model" / "config.json").read_text())["step"] == step
    assert (run / "samples" / f"step_{step:08d}.png").is_file()
    assert not list(run.rglob("*.tmp-*"))


def test_time_budget_ends_the_run_with_a_checkpoint(config, tmp_path, minilm, capsys):
    config.train.total_steps, config.train.checkpoint_every = 1000, 1000
    config.train.max_minutes = 1e-6  # spent after the first step
    model = train(config, tmp_path / "run", text_encoder=minilm)
    assert [c.name for c in list_checkpoints(tmp_path / "run")] == ["step_00000001"]
    assert json.loads((model / "config.json").read_text())["step"] == 1
    assert "stopped at step 1 (time budget train.max_minutes=1e-06)" in capsys.readouterr().out


def test_time_settings_are_checked():
    with pytest.raises(ConfigError, match="train.max_minutes"):
        load_config(TINY, ["train.max_minutes=-1"])


def test_time_based_checkpoints_between_step_intervals(config, tmp_path, minilm):
    config.train.total_steps, config.train.checkpoint_every, config.train.keep_last = 3, 1000, 5
    config.train.checkpoint_minutes = 1e-6  # due after every step
    train(config, tmp_path / "run", text_encoder=minilm)
    assert [c.name for c in list_checkpoints(tmp_path / "run")] == [f"step_0000000{s}" for s in (1, 2, 3)]
