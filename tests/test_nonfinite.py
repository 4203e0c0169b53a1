"""Non-finite steps (issue 6): NaN batches injected through `cgan.train.loop.to_device_batch` are
skipped, a streak rolls back to the newest checkpoint with lower learning rates, and a NaN that
persists stops the run with a clear error that --resume recovers from."""
import itertools
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from cgan.train import recovery
from cgan.train import loop as training
from cgan.train.checkpoint import list_checkpoints
from cgan.cli import train_main
from cgan.core.config import ConfigError, load_config
from cgan.train.recovery import TrainingDiverged
from cgan.train.loop import train
from conftest import TINY


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def state_of(run, step):
    folder = run / "checkpoints" / f"step_{step:08d}"
    return (json.loads((folder / "state.json").read_text()),
            torch.load(folder / "optimizers.pt", weights_only=True))


def assert_all_finite(run, step):
    for name in ("G", "D", "G_ema"):
        for key, value in load_file(str(run / "checkpoints" / f"step_{step:08d}" / f"{name}.safetensors")).items():
            assert torch.isfinite(value).all(), f"{name}.{key}"


@pytest.fixture
def poison(monkeypatch):
    """poison(calls): the micro-batches whose (0-based) to_device_batch call number is in `calls` get NaN images."""
    real = training.to_device_batch

    def install(calls):
        count = itertools.count()

        def poisoned(*args, **kwargs):
            batch = real(*args, **kwargs)
            if next(count) in calls:
                batch.images = torch.full_like(batch.images, math.nan)
            return batch

        monkeypatch.setattr(training, "to_device_batch", poisoned)
    return install


def test_a_nan_batch_skips_its_step_and_training_goes_on(config, tmp_path, minilm, poison, capsys):
    poison({2})  # step 3 (an R1 step): D and R1 see NaN images
    run = tmp_path / "run"
    train(config, run, text_encoder=minilm)
    assert "warning: step 3: NaN or inf loss or gradient in d_step, r1_step; optimizer step skipped" \
        in capsys.readouterr().out
    assert [(r["step"], r["nonfinite/skipped"]) for r in rows(run)] == [(2, 0), (4, 2)]
    state, optimizers = state_of(run, 4)
    assert state["step"] == 4
    # opt_D took 4 D steps + 2 R1 steps, less the 2 skipped; G was never skipped (D stayed finite).
    assert float(optimizers["opt_D"]["state"][0]["step"]) == 4
    assert float(optimizers["opt_G"]["state"][0]["step"]) == 4
    assert_all_finite(run, 4)
    assert math.isfinite(rows(run)[-1]["loss/G"])


def test_nan_steps_in_a_row_roll_back_exactly_with_lower_lr(config, tmp_path, minilm, poison, capsys):
    """The rolled-back run continues exactly like a resume from the checkpoint with halved learning rates."""
    for key, value in {"total_steps": 6, "nonfinite_patience": 2, "log_every": 1}.items():
        setattr(config.train, key, value)
    poison({2, 3})  # steps 3 and 4 skipped -> back to step 2, lr x0.5; then the data is clean again
    run = tmp_path / "run"
    train(config, run, text_encoder=minilm)
    out = capsys.readouterr().out
    assert "rolled back to" in out and "(step 2), learning rates x0.5: lr_g 0.001, lr_d 0.001" in out
    rollback = [r for r in rows(run) if "rollback" in r]
    assert rollback == [{"step": 2, "images_seen": 16, "rollback": 1, "lr_g": 0.001, "lr_d": 0.001}]
    assert [p.name for p in list_checkpoints(run)] == ["step_00000004", "step_00000006"]
    state, optimizers = state_of(run, 6)
    assert state["lr_scale"] == 0.5 and optimizers["opt_G"]["param_groups"][0]["lr"] == pytest.approx(1e-3)
    assert_all_finite(run, 6)

    poison(set())
    reference = tmp_path / "reference"  # no poison: 2 steps, then a resume with halved learning rates
    train(config, reference, max_steps=2, text_encoder=minilm)
    config.train.lr_g, config.train.lr_d = 1e-3, 1e-3
    train(config, reference, resume="latest", text_encoder=minilm)
    a = load_file(str(run / "model" / "G_ema.safetensors"))
    b = load_file(str(reference / "model" / "G_ema.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_nonfinite_flags_are_read_at_logging_and_checkpoint_steps_only(config, tmp_path, minilm, poison, capsys,
                                                                      monkeypatch):
    """No host sync per step: the flags wait on the device; warnings and the rollback come at the next check."""
    for key, value in {"total_steps": 8, "log_every": 4, "checkpoint_every": 4, "nonfinite_patience": 2}.items():
        setattr(config.train, key, value)
    reads = []  # the steps whose flags each check read
    real_check = recovery.NonfiniteGuard.check

    def check(guard, warn):
        reads.append([step for step, _ in guard.pending])
        return real_check(guard, warn)

    monkeypatch.setattr(recovery.NonfiniteGuard, "check", check)
    poison({4, 5})  # steps 5 and 6 skipped; seen at step 8; back to step 4
    run = tmp_path / "run"
    train(config, run, text_encoder=minilm)
    assert reads == [[1, 2, 3, 4], [5, 6, 7, 8], [5, 6, 7, 8]]
    out = capsys.readouterr().out
    assert "warning: step 5: NaN or inf loss or gradient in d_step" in out
    assert "warning: step 6: NaN or inf loss or gradient in d_step" in out
    assert "2 step(s) in a row up to step 6 were skipped (NaN or inf); rolled back to" in out
    assert [r["step"] for r in rows(run) if "rollback" in r] == [4]
    assert [p.name for p in list_checkpoints(run)] == ["step_00000004", "step_00000008"]
    assert_all_finite(run, 8)


def test_nan_that_persists_stops_with_a_clear_error_and_resume_recovers(config, tmp_path, minilm, poison):
    for key, value in {"total_steps": 6, "nonfinite_patience": 2, "max_rollbacks": 1}.items():
        setattr(config.train, key, value)
    poison(range(2, 10 ** 6))
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as caught:
        train(config, run, text_encoder=minilm)
    message = str(caught.value)
    assert message.startswith("training stopped at step 4: 2 step(s) in a row had a NaN or inf loss or gradient, "
                              "after 1 rollback(s) (train.max_rollbacks=1)")
    for advice in ("train.lr_g=0.001 and train.lr_d=0.001 now", "train.mixed_precision=no",
                   "python -m cgan.data check", "--resume latest"):
        assert advice in message
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002"]  # nothing written from the bad steps
    assert_all_finite(run, 2)
    poison(set())  # the data fixed: the run continues from its last good state
    train(config, run, resume="latest", text_encoder=minilm)
    assert json.loads((run / "model" / "config.json").read_text())["step"] == 6
    assert_all_finite(run, 6)


def test_nan_with_no_checkpoint_to_roll_back_to_stops_the_cli(tmp_path, cache_dir, minilm, poison, monkeypatch,
                                                              capsys):
    monkeypatch.setattr(training, "FrozenTextEncoder", lambda *args, **kwargs: minilm)
    poison(range(10 ** 6))
    code = train_main(["--config", TINY, "--out", str(tmp_path / "run"), f"data.cache_dir={cache_dir}",
                       "data.num_images=64", "train.nonfinite_patience=1"])
    err = capsys.readouterr().err
    assert code == 3
    assert "error: training stopped at step 1: 1 step(s) in a row had a NaN or inf loss or gradient, and there is " \
           f"no complete checkpoint in {tmp_path / 'run' / 'checkpoints'} to roll back to" in err


def test_reliability_settings_are_validated():
    t = load_config(TINY).train
    assert (t.nonfinite_patience, t.rollback_lr_factor, t.max_rollbacks, t.dist_timeout_s) == (8, 0.5, 3, 600)
    for override, message in (("train.nonfinite_patience=0", "train.nonfinite_patience: expected a positive"),
                              ("train.rollback_lr_factor=0", r"train.rollback_lr_factor: expected a factor in \(0, 1\]"),
                              ("train.max_rollbacks=-1", "train.max_rollbacks: expected 0 or more"),
                              ("train.dist_timeout_s=0", "train.dist_timeout_s: expected a positive number")):
        with pytest.raises(ConfigError, match=message):
            load_config(TINY, [override])
