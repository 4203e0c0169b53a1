"""MODEL_CARD.md of every exported model: what it was trained on, how, on what, for how long, and
what was measured during training. Written by training at each export (cgan/train/loop.py)."""
from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

import torch

from cgan.core import __version__
from cgan.core.config import LOSS_WEIGHTS
from cgan.core.model_config import translate_flat_model
from cgan.train.warm_start import resolve_init_from


def hardware_summary(device: torch.device, num_processes: int) -> str:
    """'1 x NVIDIA H200' or '2 threads of Intel Xeon (avx512_bf16, amx_bf16), no GPU', plus processes."""
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}"
    else:
        name = platform.processor() or platform.machine()
        features: list[str] = []
        try:
            with open("/proc/cpuinfo") as handle:
                for line in handle:
                    if line.startswith("model name") and ":" in line:
                        name = line.split(":", 1)[1].strip()
                    if line.startswith("flags"):
                        flags = set(line.split(":", 1)[1].split())
                        features = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
                        break
        except OSError:
            pass
        cores = os.cpu_count() or 1
        where = (f"{torch.get_num_threads()} thread(s) of a {cores}-core {name}"
                 + (f" ({', '.join(features)})" if features else "") + ", no GPU")
    return where + (f", {num_processes} processes" if num_processes > 1 else "")


def last_metrics(metrics_file) -> dict[str, tuple[int, float]]:
    """{metric/...: (step, value)}, the last of each in a run's metrics.jsonl ({} if there is none)."""
    import json

    found: dict[str, tuple[int, float]] = {}
    path = Path(metrics_file)
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        for key, value in row.items():
            if key.startswith("metric/") and isinstance(value, (int, float)):
                found[key] = (int(row.get("step", 0)), float(value))
    return found


# The licence of cgan's code (LICENSE) and of the weights it exports; the shipped text encoder
# (all-MiniLM-L6-v2) and the projected D's EfficientNet-Lite0 are Apache-2.0 too.
LICENSE = "apache-2.0"
# Hub ids of the text encoders cgan names by a short name (cgan/condition/text_encoder.py)
ENCODER_HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def card_header(text_encoder: str) -> str:
    """The YAML metadata block that opens a Hugging Face model card: licence, library, tags and, when the
    text encoder is a hub model, that model as base_model (it is used frozen, never fine-tuned)."""
    base = ENCODER_HUB_IDS.get(text_encoder) or (text_encoder if _HUB_ID.match(text_encoder)
                                                 and not Path(text_encoder).exists() else None)
    lines = ["---", f"license: {LICENSE}", "library_name: cgan", "pipeline_tag: text-to-image", "tags:"]
    lines += [f"- {tag}" for tag in ("cgan", "gan", "text-to-image", "conditional-image-generation")]
    if base:
        lines.append(f"base_model: {base}")
    return "\n".join(lines + ["---", ""])


def with_card_header(card: str, text_encoder: str) -> str:
    """A card with its metadata block: an existing one is kept, a missing one added."""
    return card if card.startswith("---\n") else card_header(text_encoder) + "\n" + card


LICENSE_LINES = [
    "## Licence", "",
    "These weights are released under the Apache License 2.0, as cgan's code is (its `LICENSE` file). The frozen "
    "text encoder they read is not in this folder; all-MiniLM-L6-v2 is Apache-2.0 too. A model trained on your "
    "own images may be bound by their licence as well: set `license` above to match.", ""]


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render_model_card(*, name: str, config: dict[str, Any], schema_description: str, data_summary: str,
                      num_params: int, step: int, images_seen: int, hardware: str, train_seconds: float | None,
                      metrics: dict[str, tuple[int, float]], cgan_version: str, model_path: str = "MODEL_DIR",
                      started_from: str | None = None) -> str:
    """The card as Markdown. metrics: {name: (step measured, value)}, the last of each; started_from:
    the train.init_from line (what the run's first weights were)."""
    model, train, loss = translate_flat_model(config["model"]), config["train"], config["loss"]
    g, d = model["generator"], model.get("discriminator", {})
    terms = [f"{k}={v:g}" for k, v in loss.items() if k in LOSS_WEIGHTS and v]
    if loss.get("late_kimg"):
        terms.append(f"x{loss['late_factor']:g} for {'/'.join(loss['late_terms'])} from {loss['late_kimg']:g} kimg")
    if loss.get("flat") and not train.get("init_from") and loss.get("flat_from_kimg"):
        terms.append(f"flat from {loss['flat_from_kimg']:g} kimg")
    hours, minutes = divmod(round((train_seconds or 0) / 60), 60)
    rows = [
        ("data", data_summary),
        ("attributes", schema_description.replace("\n", "; ") or "none"),
        ("generator", f"{num_params / 1e6:.2f}M parameters, {config['data']['resolution']} px, "
                      f"`model.conditioner.fusion={model['conditioner']['fusion']}`, channels base/max "
                      f"{g['channel_base']}/{g['channel_max']}" + (f", min {g['channel_min']}" if g.get("channel_min")
                                                                   else "")
                      + (f"; D's min {d['channel_min']}" if d.get("channel_min") else "")),
        ("text encoder", f"`{config['text']['encoder']}`, max {config['text']['max_length']} tokens, frozen"),
        ("training", f"{step:,} steps, {images_seen:,} images, batch {train['batch_size']} x {train['grad_accum']}, "
                     f"lr G/D {train['lr_g']:g}/{train['lr_d']:g}, R1 {train['r1_gamma']:g}, loss terms: "
                     f"{', '.join(terms) or 'adversarial only'}, `train.mixed_precision={train['mixed_precision']}`, "
                     f"seed {train['seed']}"),
        ("hardware", hardware),
        ("wall time", f"{hours} h {minutes:02d} min of training (evaluations included, over every resume)"
                      if train_seconds is not None else "not recorded"),
        ("weights", "`G_ema.safetensors` (the exponential moving average of G)"
                    + (", `D.safetensors` (the discriminator, for `train.init_from` this model)"
                       if train.get("export_d") else "")),
    ]
    if started_from:
        rows.insert(5, ("started from", started_from))
    lines = [card_header(config["text"]["encoder"]), f"# {name}: a cgan model", "",
             f"Written by cgan {cgan_version} when this model was exported at step {step:,}. `config.json` "
             "holds every setting; `attributes.json` the attribute schema.", "",
             "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "## Measured during training", ""]
    if metrics:
        lines += ["| metric | value | at step |", "|---|---|---|"]
        lines += [f"| {k.removeprefix('metric/')} | {_fmt(v)} | {s:,} |" for k, (s, v) in sorted(metrics.items())]
    else:
        lines.append("Nothing (`eval.fid_every` and `eval.faithfulness_every` were off). Measure it with "
                     "`python -m cgan.faithfulness --model DIR` or `python -m cgan.fid --model DIR --data ...`.")
    lines += ["", "## Use", "", "```bash",
              f"python sample.py --model {model_path} --prompt \"...\" --num 8 --out samples.png", "```", ""]
    return "\n".join(lines + LICENSE_LINES)


def pipeline_model_card(name: str, meta: dict[str, Any], schema_description: str, num_params: int) -> str:
    """The card `CGANPipeline.save_pretrained` writes for a model that came without one, from its config.json."""
    config = meta.get("config")
    if not config:
        encoder = meta.get("text_encoder", {}).get("name", "")
        return "\n".join([card_header(encoder), f"# {name}: a cgan model", "",
                          f"Saved by cgan {__version__} (`CGANPipeline.save_pretrained`). `config.json` holds G's "
                          "arguments; `attributes.json` the attribute schema.", ""] + LICENSE_LINES)
    d = config["data"]
    data = (f"`shapes`, {d['num_images']:,} procedural images, split `{d['split']}`" if d["name"] == "shapes"
            else f"folder `{d['path']}`")
    return render_model_card(name=name, config=config, schema_description=schema_description, data_summary=data,
                             num_params=num_params, step=int(meta.get("step", 0)),
                             images_seen=int(meta.get("images_seen", 0)),
                             hardware="not recorded (saved by `CGANPipeline.save_pretrained`)", train_seconds=None,
                             metrics={}, cgan_version=__version__, model_path=name)


def describe_init_from(path: str) -> str | None:
    """train.init_from as a card line: the state it named, and its steps, images and training time."""
    import json

    if not path:
        return None
    try:
        state_dir = resolve_init_from(path)
        if not (Path(state_dir) / "state.json").is_file():  # an exported model: its config.json says its run
            meta = json.loads((Path(state_dir) / "config.json").read_text())
            d_source = " and D" if (Path(state_dir) / "D.safetensors").is_file() else "; D fresh"
            return (f"`train.init_from={path}`: the model {state_dir} (its G_ema{d_source}), step "
                    f"{meta.get('step', 0):,} and {meta.get('images_seen', 0):,} images of its own run")
        state = json.loads((Path(state_dir) / "state.json").read_text())
    except Exception:  # noqa: BLE001 - a card line must never stop a training run's export
        return f"`train.init_from={path}` (no longer readable)"
    seconds = state.get("train_seconds")
    spent = f", {round(seconds / 60)} min of training" if seconds else ""
    return (f"`train.init_from={state_dir}`: its step {state.get('step', 0):,}, "
            f"{state.get('images_seen', 0):,} images{spent} (not counted in the rows above)")


def run_model_card(config, dataset, G_ema: torch.nn.Module, *, step: int, images_seen: int, out_dir, device,
                   num_processes: int, train_seconds: float) -> str:
    """The card of a training run's export (config: a Config; dataset: the run's CaptionedDataset)."""
    d = config.data
    data = (f"`shapes`, {d.num_images:,} procedural images, split `{d.split}`" if d.name == "shapes"
            else f"folder `{d.path}`, {len(dataset):,} records")
    return render_model_card(name=out_dir.name, config=config.to_dict(), schema_description=dataset.schema.describe(),
                             data_summary=data, num_params=sum(p.numel() for p in G_ema.parameters()), step=step,
                             images_seen=images_seen, hardware=hardware_summary(torch.device(device), num_processes),
                             train_seconds=train_seconds, metrics=last_metrics(out_dir / "metrics.jsonl"),
                             cgan_version=__version__, model_path=str(out_dir / "model"),
                             started_from=describe_init_from(config.train.init_from))
