"""Your own data: a folder of images plus metadata.jsonl (or metadata.csv), the Hugging Face
"imagefolder" convention.

Columns: `file_name` (relative to the folder), `text` (a caption, or a list of captions of
which one is drawn each time), optional `truth` (structured ground truth, carried along,
never an attribute), and any further columns as attributes. The attribute schema is, in
order of precedence: declared in the config (`data.attributes`), declared in the folder's
`attributes.json`, or inferred (strings -> categorical with the values seen, numbers ->
continuous with the range seen). `data.attributes` may instead list the columns to use, and
`data.ignore` the columns to leave out; an inferred column that looks like bookkeeping (an id,
a split, a path: named like one, or a distinct value in most rows) is kept but warned about.

Everything is validated before training starts and reported at once, with line numbers.
"""
from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageColor

from cgan.condition.attributes import AttributeSchema, InvalidAttributeError
from cgan.core.errors import CganError

RESERVED_COLUMNS = ("file_name", "text", "truth")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
SCHEMA_FILE = "attributes.json"
# Column names that usually hold bookkeeping, not something to draw (compared lower-case, - and space as _).
BOOKKEEPING_NAME = re.compile(r"(.*_)?(id|ids|uuid|guid|key|index|idx|split|fold|subset|partition|path|file|"
                              r"filename|file_path|url|uri|source|family|author|license|hash|md5|sha1|sha256|"
                              r"date|time|timestamp|row)")


class DataValidationError(CganError, ValueError):
    """A data folder failed validation; the message lists every problem found."""


@dataclass
class Problem:
    source: str  # "metadata.jsonl:12" or a file name
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.field}: {self.message}"


@dataclass
class Record:
    line: int
    file_name: str
    captions: list[str]
    attributes: dict[str, Any]
    truth: Any = None


@dataclass
class FolderReport:
    folder: Path
    metadata_file: Path
    records: list[Record]  # the records that passed
    problems: list[Problem] = field(default_factory=list)
    bad_lines: set[int] = field(default_factory=set)
    schema: AttributeSchema | None = None
    schema_source: str = "inferred"
    warnings: list[str] = field(default_factory=list)  # columns that look like bookkeeping, ...

    def summary(self) -> str:
        lines = [f"{self.folder}: {len(self.records)} valid records, {len(self.bad_lines)} with problems"]
        if self.schema is not None:
            lines.append(f"attributes ({self.schema_source}):")
            lines += ["  " + line for line in self.schema.describe().splitlines()]
        lengths = [len(c.split()) for r in self.records for c in r.captions]
        if lengths:
            lines.append(f"captions: {sum(len(r.captions) for r in self.records)} "
                         f"({len({c for r in self.records for c in r.captions})} unique), words per caption "
                         f"min {min(lengths)} / mean {sum(lengths) / len(lengths):.1f} / max {max(lengths)}")
        if self.schema is not None:
            for spec in self.schema.specs:
                if spec.kind == "categorical":
                    counts = {v: 0 for v in spec.values}
                    for r in self.records:
                        if r.attributes.get(spec.name) in counts:
                            counts[r.attributes[spec.name]] += 1
                    shown = sorted(counts.items(), key=lambda item: -item[1])[:20]  # the most common
                    more = f", ... ({len(counts) - 20} more values)" if len(counts) > 20 else ""
                    lines.append(f"  {spec.name}: " + ", ".join(f"{v}={n}" for v, n in shown) + more)
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _read_rows(metadata: Path, problems: list[Problem]) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    if metadata.suffix == ".jsonl":
        # utf-8-sig: a byte-order mark (as some editors write) is not part of the first record
        for line_no, line in enumerate(metadata.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                problems.append(Problem(f"{metadata.name}:{line_no}", "json", f"not valid JSON ({err.msg})"))
                continue
            if not isinstance(row, dict):
                problems.append(Problem(f"{metadata.name}:{line_no}", "json", "expected an object per line"))
                continue
            rows.append((line_no, row))
    else:
        with metadata.open(newline="", encoding="utf-8-sig") as handle:
            for line_no, row in enumerate(csv.DictReader(handle), start=2):  # line 1 is the header
                rows.append((line_no, {k: _csv_value(v) for k, v in row.items() if k is not None}))
    return rows


def _csv_value(value: str | None) -> Any:
    if value is None or value == "":
        return None
    try:
        number = float(value)
        return number if math.isfinite(number) else value
    except ValueError:
        return value


def _kind_of(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or isinstance(value, str):
        return "categorical"
    if isinstance(value, (int, float)):
        return "continuous"
    return "other"


def infer_schema(rows: list[tuple[int, dict[str, Any]]], metadata_name: str,
                 problems: list[Problem]) -> AttributeSchema:
    columns: dict[str, dict[str, list[int]]] = {}
    for line_no, row in rows:
        for name, value in row.items():
            if name in RESERVED_COLUMNS:
                continue
            kind = _kind_of(value)
            if kind is not None:
                columns.setdefault(name, {}).setdefault(kind, []).append(line_no)
    spec: dict[str, Any] = {}
    for name, kinds in columns.items():
        if len(kinds) > 1 or "other" in kinds:
            detail = "; ".join(f"{k} on lines {', '.join(map(str, v[:5]))}{' ...' if len(v) > 5 else ''}"
                               for k, v in kinds.items())
            problems.append(Problem(metadata_name, name, f"column mixes types ({detail}); expected all strings "
                                    "(categorical) or all numbers (continuous)"))
            continue
        values = [row[name] for _, row in rows if row.get(name) is not None]
        if "categorical" in kinds:
            spec[name] = {"type": "categorical", "values": sorted({_as_category(v) for v in values})}
        else:
            low, high = float(min(values)), float(max(values))
            spec[name] = {"type": "continuous", "range": [low, high if high > low else low + 1.0]}
    return AttributeSchema.from_dict(spec, metadata_name)


def bookkeeping_warnings(schema: AttributeSchema, rows: list[tuple[int, dict[str, Any]]]) -> list[str]:
    """A warning per inferred attribute column that looks like bookkeeping rather than a condition:
    named like an id / split / path, or (categorical) a distinct value in more than half of the rows."""
    warnings = []
    for spec in schema.specs:
        normalised = re.sub(r"[\s-]+", "_", spec.name.strip().lower())
        reason = None
        if BOOKKEEPING_NAME.fullmatch(normalised):
            reason = "its name suggests bookkeeping"
        elif spec.kind == "categorical" and len(rows) >= 20 and len(spec.values) > len(rows) / 2:
            reason = f"{len(spec.values)} distinct values in {len(rows)} rows, like an identifier"
        if reason:
            warnings.append(f"column '{spec.name}' becomes a condition ({reason}); if it is not something to "
                            f"draw, leave it out with data.ignore=[{spec.name}] (python -m cgan.data check DIR "
                            f"--ignore {spec.name}), or list the columns to use with data.attributes=[...]")
    return warnings


def _as_category(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def load_rgb(path: Path, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Open any image as RGB: 16-bit scaled to 8-bit, palette and alpha composited on `background`."""
    with Image.open(path) as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            array = np.asarray(img, dtype=np.float64)
            scale = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
            img = Image.fromarray((np.clip(array / scale, 0, 1) * 255).round().astype(np.uint8), "L")
        if img.mode == "P" or (img.mode in ("L", "RGB") and "transparency" in img.info):
            img = img.convert("RGBA")
        if img.mode in ("LA", "PA", "RGBA", "La", "RGBa"):
            rgba = img.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, background + (255,))
            return Image.alpha_composite(canvas, rgba).convert("RGB")
        return img.convert("RGB")


def resize_center_crop(img: Image.Image, resolution: int) -> Image.Image:
    width, height = img.size
    scale = resolution / min(width, height)
    new_size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    if new_size != img.size:
        img = img.resize(new_size, Image.Resampling.LANCZOS)
    left, top = (new_size[0] - resolution) // 2, (new_size[1] - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def find_metadata(folder: Path) -> Path:
    if not folder.is_dir():
        raise DataValidationError(f"{folder}: data folder not found")
    for name in METADATA_FILES:
        if (folder / name).is_file():
            return folder / name
    raise DataValidationError(f"{folder}: no metadata.jsonl or metadata.csv; expected one line per image with "
                              "'file_name' and 'text' (see README, 'Your own data')")


def _file_problem(folder: Path, file_name: Any, resolution: int, check_images: bool) -> str | None:
    """What is wrong with a record's file_name and its image, or None."""
    if not isinstance(file_name, str) or not file_name.strip():
        return "missing or empty"
    if Path(file_name).is_absolute() or ".." in Path(file_name).parts:
        return f"'{file_name}': expected a path inside the data folder (relative, without '..')"
    if not (folder / file_name).resolve().is_relative_to(folder.resolve()):
        return (f"'{file_name}': a link that leads out of the data folder (to {(folder / file_name).resolve()}); "
                "copy the file into the folder instead")
    path = folder / file_name
    if not path.is_file():
        return f"'{file_name}': file not found"
    if not check_images:
        return None
    try:
        with Image.open(path) as img:
            img.load()  # full decode: catches truncated and corrupt files
            size = img.size
    except Exception as err:  # noqa: BLE001 - any decoder failure is a bad file
        return f"'{file_name}': unreadable image ({err})"
    if min(size) < resolution:
        return f"'{file_name}': image is {size[0]}x{size[1]}, smaller than the model's {resolution}x{resolution}"
    return None


def validate_folder(folder: str | Path, resolution: int, declared_schema: dict[str, Any] | list[str] | None = None,
                    check_images: bool = True, ignore: list[str] | tuple[str, ...] = ()) -> FolderReport:
    """Read and check every record; collect all problems instead of stopping at the first.

    declared_schema: a schema (dict), or a list of the columns to use as attributes (their types
    inferred, or taken from the folder's attributes.json); ignore: columns that are not attributes."""
    folder = Path(folder)
    metadata = find_metadata(folder)
    problems: list[Problem] = []
    rows = _read_rows(metadata, problems)
    report = FolderReport(folder, metadata, [], problems)
    use_columns = declared_schema if isinstance(declared_schema, list) else None
    present = {name for _, row in rows for name in row} - set(RESERVED_COLUMNS)
    for key, names in (("data.attributes", use_columns or []), ("data.ignore", list(ignore))):
        for name in names:
            if name not in present:
                problems.append(Problem(key, str(name), f"no such column in {metadata.name} (columns: "
                                        f"{', '.join(sorted(present)) or 'none besides file_name and text'})"))

    def keep(name: str) -> bool:
        return name not in ignore and (use_columns is None or name in use_columns)

    if isinstance(declared_schema, dict):
        report.schema, report.schema_source = AttributeSchema.from_dict(declared_schema, "data.attributes"), "config"
    elif (folder / SCHEMA_FILE).is_file():
        try:
            declared = json.loads((folder / SCHEMA_FILE).read_text())
            if isinstance(declared, dict):
                declared = {name: spec for name, spec in declared.items() if keep(name)}
            report.schema = AttributeSchema.from_dict(declared, str(folder / SCHEMA_FILE))
            report.schema_source = SCHEMA_FILE
        except (json.JSONDecodeError, InvalidAttributeError) as err:
            raise DataValidationError(f"{folder / SCHEMA_FILE}: {err}") from err
    else:
        kept_rows = [(line_no, {k: v for k, v in row.items() if k in RESERVED_COLUMNS or keep(k)})
                     for line_no, row in rows]
        report.schema = infer_schema(kept_rows, metadata.name, problems)
        if use_columns is None:
            report.warnings = bookkeeping_warnings(report.schema, rows)
        else:
            report.schema_source = "inferred, columns from data.attributes"
    schema = report.schema
    for line_no, row in rows:
        where = f"{metadata.name}:{line_no}"
        before = len(problems)
        file_name = row.get("file_name")
        problem = _file_problem(folder, file_name, resolution, check_images)
        if problem:
            problems.append(Problem(where, "file_name", problem))
        text = row.get("text")
        captions = text if isinstance(text, list) else [text]
        if not captions or any(not isinstance(c, str) or not c.strip() for c in captions):
            problems.append(Problem(where, "text", "missing or empty caption (a string, or a list of strings)"))
        attributes = {k: (_as_category(v) if isinstance(v, bool) else v) for k, v in row.items()
                      if k not in RESERVED_COLUMNS and v is not None}
        if schema is not None:
            # Undeclared columns are not attributes; a mixed-type column was reported above.
            attributes = {k: v for k, v in attributes.items() if k in schema.by_name}
            for name, value in attributes.items():
                try:
                    schema.validate({name: value}, source=where)
                except InvalidAttributeError as err:
                    problems.append(Problem(where, name, str(err).split(": ", 1)[-1]))
        if len(problems) > before:
            report.bad_lines.add(line_no)
        else:
            report.records.append(Record(line_no, file_name, [c.strip() for c in captions], attributes,
                                         row.get("truth")))
    if not rows:
        problems.append(Problem(metadata.name, "rows", "no records"))
    return report


def format_problems(report: FolderReport, limit: int = 50) -> str:
    shown = [f"  {p}" for p in report.problems[:limit]]
    more = len(report.problems) - limit
    if more > 0:
        shown.append(f"  ... and {more} more")
    return "\n".join(shown)


def parse_background(name: str) -> tuple[int, int, int]:
    try:
        return ImageColor.getrgb(name)[:3]  # type: ignore[return-value]
    except ValueError as err:
        raise DataValidationError(f"data.background: {name!r} is not a colour (try white, black or #rrggbb)") from err
