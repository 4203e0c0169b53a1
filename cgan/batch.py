"""Generation in bulk: `sample.py --prompts FILE --out-dir DIR` and the checks of sample.py's arguments.

A prompts file is one of
    .txt    one prompt a line (blank lines skipped)
    .jsonl  one object a line: `text` plus one key per attribute
    .csv    a header row: a `text` column plus one column per attribute (empty cell = unset)
Every row is checked against the model's attributes before the first image. The output folder is a
data folder in the form training reads (README, "Your own data"): the images, `metadata.jsonl`
(file_name, text, attributes), `attributes.json` (the model's schema) and `generation.json` (model,
seeds, truncation), so it goes straight into `cgan.fid`, `cgan.faithfulness --data` or training.
"""
from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path
from typing import Any, Iterator

from cgan.condition.attributes import AttributeSchema, InvalidAttributeError
from cgan.core.errors import CganError
from cgan.core.files import atomic_write_text
from cgan.core.images import save_image, tensor_to_images

PROMPT_SUFFIXES = (".txt", ".jsonl", ".csv")
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed's range


class PromptsFileError(CganError, ValueError):
    """A prompts file that cannot be read; the message names the file, the line and the field."""


def parse_seeds(text: str) -> list[int]:
    """'0-35,40,42' -> [0, ..., 35, 40, 42], as StyleGAN's generate.py takes them."""
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise ValueError(f"--seeds {text!r}: expected numbers and ranges such as 0-35,40,42; got {part!r}")
        low, high = int(match[1]), int(match[2] or match[1])
        if high < low:
            raise ValueError(f"--seeds {text!r}: range {part.strip()!r} runs backwards")
        if high > MAX_SEED:
            raise ValueError(f"--seeds {text!r}: seeds go up to 2**64 - 1, got {high}")
        if high - low >= 1_000_000:
            raise ValueError(f"--seeds {text!r}: range {part.strip()!r} has over a million seeds")
        seeds += range(low, high + 1)
    return seeds


def format_seeds(seeds: list[int]) -> str:
    """[0, 1, 2, 3, 40, 42] -> '0-3,40,42', the form --seeds takes (parse_seeds reads it back)."""
    runs: list[list[int]] = []
    for seed in seeds:
        if runs and seed == runs[-1][1] + 1:
            runs[-1][1] = seed
        else:
            runs.append([seed, seed])
    return ",".join(f"{low}" if low == high else f"{low},{high}" if high == low + 1 else f"{low}-{high}"
                    for low, high in runs)


def check_seed_range(seed: int, count: int) -> None:
    if not 0 <= seed <= MAX_SEED - max(count - 1, 0):
        raise ValueError(f"--seed: expected a number from 0 to 2**64 - 1 - (--num - 1), got {seed}")


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, {text, attribute: value}) per row of a .txt, .jsonl or .csv file."""
    if path.suffix == ".txt":
        for line_no, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if line.strip():
                yield line_no, {"text": line.strip()}
    elif path.suffix == ".jsonl":
        for line_no, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise PromptsFileError(f"{path}:{line_no}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise PromptsFileError(f"{path}:{line_no}: expected an object such as "
                                       '{"text": "a red circle", "style": "flat"}')
            yield line_no, row
    else:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if "text" not in (reader.fieldnames or []):
                raise PromptsFileError(f"{path}:1: expected a header row with a 'text' column, got "
                                       f"{', '.join(reader.fieldnames or []) or 'nothing'}")
            for line_no, row in enumerate(reader, start=2):
                yield line_no, {k: v for k, v in row.items() if k is not None and v not in (None, "")}


def read_prompts(path: str | Path, schema: AttributeSchema) -> list[tuple[str, dict[str, Any]]]:
    """Every row of a prompts file as (prompt, valid attributes); all rows checked before returning."""
    path = Path(path)
    if path.suffix not in PROMPT_SUFFIXES:
        raise PromptsFileError(f"--prompts {str(path)!r}: expected a {', '.join(PROMPT_SUFFIXES)} file")
    if not path.is_file():
        raise PromptsFileError(f"--prompts {str(path)!r}: file not found")
    rows = []
    for line_no, row in _rows(path):
        where = f"{path}:{line_no}"
        text = row.pop("text", None)
        if not isinstance(text, str):
            raise PromptsFileError(f"{where}: text: expected a prompt string, got {text!r}")
        row.pop("file_name", None)  # a metadata.jsonl of real images also works as a prompts file
        row.pop("truth", None)
        try:
            attributes = schema.validate(row, source=where)
        except InvalidAttributeError as err:
            raise PromptsFileError(str(err)) from None
        rows.append((text, attributes))
    if not rows:
        raise PromptsFileError(f"--prompts {str(path)!r}: no prompts in the file")
    return rows


def write_generated_set(pipe, rows: list[tuple[str, dict[str, Any]]], seeds: list[int], out_dir: Path,
                        truncation: float = 1.0, model: str = "", progress: bool = True) -> int:
    """Generate an image per (row, seed) into out_dir as a data folder; returns the number written.

    Images are written as they are made (each atomically); metadata.jsonl last, so a folder with a
    metadata.jsonl is complete. Work goes through the pipeline in chunks of 64 images."""
    from tqdm import tqdm

    clean = [pipe.check_inputs(prompt, attributes, len(seeds)) for prompt, attributes in rows]
    jobs = [(r, seed) for r in range(len(rows)) for seed in seeds]
    records = []
    start = time.perf_counter()
    bar = tqdm(total=len(jobs), unit="img", disable=not progress, desc=f"generating into {out_dir}")
    for first in range(0, len(jobs), 64):
        chunk = jobs[first:first + 64]
        # each image's attributes: the row's, plus those drawn for its unset ones (what the record names)
        drawn = [pipe.fill_unset(rows[r][0], clean[r], seed) for r, seed in chunk]
        tensor = pipe.generate_batch([rows[r][0] for r, _ in chunk], drawn, [seed for _, seed in chunk], truncation)
        for (r, seed), used, image in zip(chunk, drawn, tensor_to_images(tensor)):
            name = f"{r:05d}_seed{seed:06d}.png"  # zero-padded as --out-dir's seedNNNNNN.png: sorts by seed
            save_image(out_dir / name, image)
            records.append({"file_name": name, "text": rows[r][0], **used})
        bar.update(len(chunk))
    bar.close()
    atomic_write_text(out_dir / "attributes.json", json.dumps(pipe.schema.to_dict(), indent=2) + "\n")
    atomic_write_text(out_dir / "generation.json", json.dumps(
        {"model": model, "step": pipe.meta.get("step"), "seeds": seeds, "truncation": truncation,
         "unset_attributes": pipe.unset_attributes,
         "rows": len(rows), "images": len(records), "seconds": round(time.perf_counter() - start, 1)}, indent=2) + "\n")
    atomic_write_text(out_dir / "metadata.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return len(records)


__all__ = ["PromptsFileError", "format_seeds", "parse_seeds", "read_prompts", "write_generated_set"]
