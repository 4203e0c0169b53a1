"""Reading config values: a YAML value checked against a dataclass field's type."""
from __future__ import annotations

import types
import typing
from typing import Any

from cgan.core.errors import ConfigError


def coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Check a YAML value against a dataclass field's type (ints are accepted as floats)."""
    members = [m for m in typing.get_args(annotation) if m is not type(None)]
    if isinstance(annotation, types.UnionType) and len(members) > 1 and value is not None:
        for member in members:  # dict[str, Any] | list[str] | None: the first type that fits
            try:
                return coerce(value, member, key, source)
            except ConfigError:
                pass
        raise ConfigError(f"{source}: {key} expected {' or '.join(str(m) for m in members)}, got {value!r}")
    hints = str(annotation)
    if value is None:
        if "None" in hints or "Any" in hints:
            return None
        raise ConfigError(f"{source}: {key} may not be null")
    if hints.startswith("float") or hints == "<class 'float'>":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "2e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hints in ("int", "<class 'int'>"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hints in ("bool", "<class 'bool'>"):
        if isinstance(value, bool):
            return value
    elif hints.startswith("str"):
        if isinstance(value, str):
            return value
    elif hints.startswith("list"):
        if isinstance(value, list):
            (item_type,) = typing.get_args(annotation) or (Any,)
            return [coerce(v, item_type, f"{key}[{i}]", source) for i, v in enumerate(value)]
    elif hints.startswith("dict"):
        if isinstance(value, dict):
            return value
    else:
        return value
    type_name = getattr(annotation, "__name__", None) or hints
    raise ConfigError(f"{source}: {key} expected {type_name}, got {value!r}")
