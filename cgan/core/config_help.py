"""`python train.py --print-config`: every setting with its value and the help written beside its field in
cgan/core/config.py."""
from __future__ import annotations

import dataclasses
import inspect
import json
import re
from typing import Any

from cgan.core.config import Config


def describe_settings(config: "Config | None" = None) -> str:
    """Every setting as `section.key = value  # help`, the help taken from the comments beside (or just
    above) its field in the config classes' source; with `config`, its values, else the defaults."""
    config = config or Config()
    lines: list[str] = []
    for section in dataclasses.fields(Config):
        _describe_section(getattr(config, section.name), section.name, lines)
    return "\n".join(lines)


def _describe_section(values: Any, prefix: str, lines: list[str]) -> None:
    cls = type(values)
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# "))
            continue
        match = re.match(r"(\w+): [^=]+=.*?(?:#\s*(.*))?$", stripped)
        if match:
            comments[match.group(1)] = match.group(2) or " ".join(pending)
        pending = []
    lines.append(f"[{prefix}]")
    nested = []
    for f in dataclasses.fields(cls):
        value = getattr(values, f.name)
        if dataclasses.is_dataclass(value):
            nested.append((value, f"{prefix}.{f.name}"))
            continue
        help_text = comments.get(f.name, "")
        lines.append(f"{prefix}.{f.name} = {json.dumps(value)}" + (f"  # {help_text}" if help_text else ""))
    for value, name in nested:
        _describe_section(value, name, lines)
