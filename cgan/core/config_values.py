"""Reading config values: YAML read as YAML 1.2 (`yaml_load`), a value checked against a dataclass field's type."""
from __future__ import annotations

import re
import types
import typing
from typing import Any

import yaml

from cgan.core.errors import ConfigError


class _Yaml12Loader(yaml.SafeLoader):
    """YAML as 1.2 reads it: only true and false are booleans, so `train.mixed_precision=no` stays the
    string "no" (YAML 1.1, PyYAML's default, reads no/yes/on/off as booleans)."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                    list("tTfF"))
# A bool setting given in YAML 1.1's words still means what it said.
_BOOL_WORDS = {"yes": True, "on": True, "y": True, "no": False, "off": False, "n": False}


def yaml_load(text: str) -> Any:
    """A YAML document (a config file or an override's value) as YAML 1.2 reads it."""
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass


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
        if isinstance(value, str) and value.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.lower()]
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
