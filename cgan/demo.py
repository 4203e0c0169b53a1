"""A local web demo of an exported model: `cgan-demo --model shapes64` or `python -m cgan.demo`.

A prompt box, one widget per attribute of the model's schema (a dropdown with "(unset)" for a
categorical attribute; a slider with a "set" box for a continuous one), seed, number of images and
truncation; a gallery of the images, the attention maps beside them for cross-attention models,
and the grid to download. Requests are queued and run one at a time on the one loaded model; the
pipeline's text-embedding cache is bounded. Needs the `demo` extra (`pip install "cgan[demo]"`:
Gradio); Gradio's analytics are off, and the page loads nothing from the internet.
"""
from __future__ import annotations

import argparse
import keyword
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

# Before Gradio is imported: no usage analytics, no version check against the internet.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRADIO_TELEMETRY_ENABLED", "False")

UNSET = "(unset)"
MAX_IMAGES = 16


def attributes_from_widgets(schema, values: list[Any]) -> dict[str, Any]:
    """The widgets' values (per attribute: a dropdown value, or a (set?, slider value) pair, in schema
    order) -> the attribute dict the pipeline takes; unset ones are left out."""
    attributes, position = {}, 0
    for spec in schema.specs:
        if spec.kind == "categorical":
            if values[position] not in (None, UNSET):
                attributes[spec.name] = values[position]
            position += 1
        else:
            if values[position]:
                attributes[spec.name] = float(values[position + 1])
            position += 2
    return attributes


class DemoInputError(ValueError):
    """A request the demo cannot draw; the message says which input and what was expected."""


def api_parameter_names(schema) -> list[str]:
    """The names of the generate endpoint's inputs, in order: prompt, seed, num_images, truncation, then one
    per categorical attribute (its name) and two per continuous one (set_NAME, NAME), so an API client
    reads `style` and `size`, not param_4 and param_7."""
    names = ["prompt", "seed", "num_images", "truncation"]
    for spec in schema.specs:
        base = re.sub(r"\W", "_", spec.name)
        base = base if base.isidentifier() and not keyword.iskeyword(base) else f"attr_{base}"
        for name in ([base] if spec.kind == "categorical" else [f"set_{base}", base]):
            while name in names:
                name = f"attr_{name}"
            names.append(name)
    return names


def named_handler(runner: "DemoRunner", schema):
    """The runner as Gradio's click function: its signature names every input (api_parameter_names), and
    bad input raises gr.Error, which the page shows and an API client receives as an error."""
    import inspect

    import gradio as gr

    def generate(*values):
        try:
            return runner(*values)
        except DemoInputError as err:
            raise gr.Error(str(err)) from None

    generate.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in api_parameter_names(schema)])
    return generate


class DemoRunner:
    """What one press of Generate does, apart from the page: images, attention figures, the grid."""

    def __init__(self, pipe, out_dir: str | Path | None = None):
        self.pipe = pipe
        # maps per word need the cross-attention fusion and attention layers in G
        self.has_attention = (pipe.meta.get("generator", {}).get("fusion", "cross_attention") == "cross_attention"
                              and any(block.attn is not None for block in pipe.G.blocks))
        self.out_dir = Path(out_dir or tempfile.mkdtemp(prefix="cgan-demo-"))

    def __call__(self, prompt: str, seed: float, num_images: float, truncation: float, *widget_values):
        """-> (images, attention figures, grid file, message); bad input raises DemoInputError."""
        from cgan.batch import MAX_SEED
        from cgan.condition.attributes import InvalidAttributeError
        from cgan.core.images import describe_condition, image_grid, save_image, tensor_to_images
        from cgan.nets.attention_maps import attention_figure

        try:
            if seed is None or not 0 <= int(seed) <= MAX_SEED - MAX_IMAGES or int(seed) != seed:
                raise ValueError(f"seed: expected a whole number from 0 to 2**64 - {MAX_IMAGES + 1}, got {seed}")
            count = int(num_images)
            if not 1 <= count <= MAX_IMAGES:
                raise ValueError(f"number of images: expected 1 to {MAX_IMAGES}, got {num_images}")
            if not 0.0 < float(truncation) <= 1.0:
                raise ValueError(f"truncation: expected a number in (0, 1], got {truncation}")
            attributes = attributes_from_widgets(self.pipe.schema, list(widget_values))
            attributes = self.pipe.check_inputs(prompt or "", attributes, count)
            if self.has_attention:
                tensor, maps = self.pipe.attention_maps(prompt or "", attributes, num_images=count, seed=int(seed),
                                                        truncation=float(truncation))
            else:
                tensor, maps = self.pipe.generate_tensor(prompt or "", attributes, count, int(seed),
                                                         float(truncation)), None
        except (ValueError, InvalidAttributeError) as err:
            raise DemoInputError(str(err)) from None
        label = describe_condition(prompt or "", attributes)
        images = tensor_to_images(tensor)
        figures = [attention_figure(tensor[k], maps[k], f"seed {int(seed) + k}") for k in range(count)] if maps else []
        grid_path = self.out_dir / f"grid-seed{int(seed)}-{abs(hash((prompt, str(attributes)))) % 10**8}.png"
        save_image(grid_path, image_grid(images, min(count, 8), [label] * ((count + 7) // 8)))
        captions = [f"seed {int(seed) + k}" for k in range(count)]
        message = f"{label}: {count} image(s)"
        unknown = self.pipe.unknown_words(prompt or "")
        if unknown:
            message += (f"\n\n**Warning:** {', '.join(repr(w) for w in unknown)} never appeared in this model's "
                        "training captions, so the images will not follow "
                        + ("it." if len(unknown) == 1 else "them."))
        return list(zip(images, captions)), figures, str(grid_path), message


def build_demo(pipe, title: str = "cgan"):
    """The Gradio page for a CGANPipeline (queued; one request at a time on the one model)."""
    import gradio as gr

    runner = DemoRunner(pipe)
    with gr.Blocks(title=f"cgan: {title}") as demo:
        gr.Markdown(f"# cgan: {title}\nA text-and-attribute conditioned GAN ({pipe.resolution} px). "
                    "Type a prompt, pick the attributes, press Generate.")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", value="", elem_id="prompt",
                                    placeholder="a red circle left of a blue square")
                widgets = []
                for spec in pipe.schema.specs:
                    if spec.kind == "categorical":
                        widgets.append(gr.Dropdown([UNSET] + list(spec.values), value=UNSET, label=spec.name,
                                                   elem_id=f"attr-{spec.name}"))
                    else:
                        widgets.append(gr.Checkbox(value=False, label=f"set {spec.name}", elem_id=f"set-{spec.name}"))
                        widgets.append(gr.Slider(spec.low, spec.high, value=(spec.low + spec.high) / 2,
                                                 label=spec.name, elem_id=f"attr-{spec.name}"))
                seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                num_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Images", elem_id="num-images")
                truncation = gr.Slider(0.1, 1.0, value=1.0, step=0.05, label="Truncation", elem_id="truncation")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                message = gr.Markdown(elem_id="message")
                gallery = gr.Gallery(label="Images", columns=4, format="png", elem_id="gallery")
                attention = gr.Gallery(label="Attention maps (where each word and attribute was attended to)",
                                       columns=1, format="png", visible=runner.has_attention, elem_id="attention")
                grid = gr.File(label="Download the grid", elem_id="grid")
        button.click(named_handler(runner, pipe.schema), inputs=[prompt, seed, num_images, truncation, *widgets],
                     outputs=[gallery, attention, grid, message], api_name="generate", concurrency_limit=1)
    demo.queue(max_size=256, default_concurrency_limit=1)
    return demo


def main(argv: list[str] | None = None) -> int:
    from cgan.core.errors import plain_warnings

    plain_warnings()
    parser = argparse.ArgumentParser(prog="cgan-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes64", help="an exported model folder or a shipped model's name")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines too")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--strict", action="store_true",
                        help="refuse prompts with words the model never saw in its training captions (else a warning)")
    args = parser.parse_args(argv)
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        print('error: the demo needs Gradio: pip install "cgan[demo]"', file=sys.stderr)
        return 2
    from cgan.core.errors import USER_ERRORS
    from cgan.pipeline import CGANPipeline

    try:
        if args.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"--device {args.device}: no CUDA GPU is available here; use --device cpu")
        pipe = CGANPipeline.from_pretrained(args.model, device=args.device, strict=args.strict)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    build_demo(pipe, title=Path(str(args.model)).name).launch(server_name=args.host, server_port=args.port,
                                                               show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
