"""Attribute schema (categorical and continuous) and the attribute embedder.

Attributes travel through the data loader as three tensors, one column per attribute in
schema order:
    attr_index   (B, A) long   categorical value index (0 where not categorical or missing)
    attr_value   (B, A) float  continuous value normalised to [0, 1] (0 where not continuous)
    attr_present (B, A) bool   False where the attribute is missing or dropped
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn as nn

from cgan.core.errors import CganError


class InvalidAttributeError(CganError, ValueError):
    """An attribute name or value a model or data set does not know."""


@dataclass
class AttributeSpec:
    name: str
    kind: str  # "categorical" | "continuous"
    values: list[str] = field(default_factory=list)  # categorical
    low: float = 0.0  # continuous range
    high: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"type": "categorical", "values": list(self.values)}
        return {"type": "continuous", "range": [self.low, self.high]}

    def describe(self) -> str:
        if self.kind == "categorical":
            if len(self.values) > 20:  # an id-like column: the list would fill the screen
                return (f"{self.name}: one of {len(self.values)} values: {', '.join(self.values[:10])}, ... "
                        f"{', '.join(self.values[-2:])}")
            return f"{self.name}: one of {', '.join(self.values)}"
        return f"{self.name}: a number in [{self.low:g}, {self.high:g}]"


class AttributeSchema:
    """An ordered list of named attributes; parses, validates and encodes attribute dicts."""

    def __init__(self, specs: list[AttributeSpec]):
        self.specs = list(specs)
        self.by_name = {s.name: s for s in self.specs}
        if len(self.by_name) != len(self.specs):
            raise InvalidAttributeError("attribute schema: duplicate attribute names")

    def __len__(self) -> int:
        return len(self.specs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AttributeSchema) and self.to_dict() == other.to_dict()

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def to_dict(self) -> dict[str, Any]:
        return {s.name: s.to_dict() for s in self.specs}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "attribute schema") -> "AttributeSchema":
        """Accepts {name: {type: categorical, values: [...]}} or the short forms
        {name: [v1, v2]} (categorical) and {name: {type: continuous, range: [lo, hi]}}."""
        specs = []
        for name, spec in data.items():
            if isinstance(spec, list):
                spec = {"type": "categorical", "values": spec}
            if not isinstance(spec, Mapping) or spec.get("type") not in ("categorical", "continuous"):
                raise InvalidAttributeError(
                    f"{source}: attribute '{name}' expected {{type: categorical, values: [...]}} "
                    f"or {{type: continuous, range: [low, high]}}, got {spec!r}")
            if spec["type"] == "categorical":
                values = [str(v) for v in spec.get("values", [])]
                if not values:
                    raise InvalidAttributeError(f"{source}: categorical attribute '{name}' has no values")
                specs.append(AttributeSpec(name, "categorical", values=values))
            else:
                low, high = (float(x) for x in spec.get("range", [0.0, 1.0]))
                if not high > low:
                    raise InvalidAttributeError(f"{source}: continuous attribute '{name}' needs range [low, high] with high > low")
                specs.append(AttributeSpec(name, "continuous", low=low, high=high))
        return cls(specs)

    def describe(self) -> str:
        if not self.specs:
            return "(this model has no attributes)"
        return "\n".join(s.describe() for s in self.specs)

    def validate(self, attributes: Mapping[str, Any], source: str = "attributes") -> dict[str, Any]:
        """Return a clean {name: value} dict, raising a clear error for unknown names or values.
        A value of None (or a missing name) means unset: the learned null token stands in."""
        clean: dict[str, Any] = {}
        for name, value in attributes.items():
            spec = self.by_name.get(name)
            if spec is None:
                close = difflib.get_close_matches(name, self.names, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise InvalidAttributeError(
                    f"{source}: unknown attribute '{name}'{hint}; this model's attributes are:\n{self.describe()}")
            if value is None or value == "":
                continue
            if spec.kind == "categorical":
                if str(value) not in spec.values:
                    raise InvalidAttributeError(
                        f"{source}: attribute '{name}' has no value {value!r}; expected one of {', '.join(spec.values)}")
                clean[name] = str(value)
            else:
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    raise InvalidAttributeError(f"{source}: attribute '{name}' expected a number in "
                                          f"[{spec.low:g}, {spec.high:g}], got {value!r}") from None
                if not math.isfinite(number) or not spec.low <= number <= spec.high:
                    raise InvalidAttributeError(f"{source}: attribute '{name}' = {value} is outside its range "
                                          f"[{spec.low:g}, {spec.high:g}]")
                clean[name] = number
        return clean

    def encode_one(self, attributes: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """{name: value} -> (attr_index (A,), attr_value (A,), attr_present (A,)); values must be valid."""
        num_attrs = len(self.specs)
        index = torch.zeros(num_attrs, dtype=torch.long)
        value = torch.zeros(num_attrs, dtype=torch.float32)
        present = torch.zeros(num_attrs, dtype=torch.bool)
        for a, spec in enumerate(self.specs):
            v = attributes.get(spec.name)
            if v is None:
                continue
            present[a] = True
            if spec.kind == "categorical":
                index[a] = spec.values.index(str(v))
            else:
                value[a] = (float(v) - spec.low) / (spec.high - spec.low)
        return index, value, present

    def encode(self, batch: list[Mapping[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A list of attribute dicts -> (attr_index (B, A), attr_value (B, A), attr_present (B, A))."""
        encoded = [self.encode_one(a) for a in batch]
        if not encoded:
            empty = torch.zeros(0, len(self.specs))
            return empty.long(), empty, empty.bool()
        return tuple(torch.stack(t) for t in zip(*encoded))  # type: ignore[return-value]

    def decode_one(self, index: torch.Tensor, value: torch.Tensor, present: torch.Tensor) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for a, spec in enumerate(self.specs):
            if not bool(present[a]):
                continue
            if spec.kind == "categorical":
                out[spec.name] = spec.values[int(index[a])]
            else:
                out[spec.name] = spec.low + float(value[a]) * (spec.high - spec.low)
        return out


def drop_attributes(present: torch.Tensor, drop_prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly mark attributes as missing (training-time condition dropout)."""
    if drop_prob <= 0:
        return present
    keep = torch.rand(present.shape, generator=generator, device=present.device) >= drop_prob
    return present & keep


class AttributeEmbedder(nn.Module):
    """Attribute tensors -> one token per attribute, attr_tokens (B, A, dim).

    token = value embedding + embedding of which attribute it is. A missing attribute takes
    that attribute's learned null token instead of a value embedding, so any attribute can be
    left unset at sampling time.
    """

    def __init__(self, *, schema: AttributeSchema, dim: int):
        super().__init__()
        self.schema = schema
        num_attrs = len(schema)
        self.num_values = [len(s.values) if s.kind == "categorical" else 0 for s in schema.specs]
        offsets, total = [], 0
        for n in self.num_values:
            offsets.append(total)
            total += n
        self.register_buffer("value_offsets", torch.tensor(offsets, dtype=torch.long), persistent=False)
        self.register_buffer("is_categorical", torch.tensor([s.kind == "categorical" for s in schema.specs]),
                             persistent=False)
        self.value_embedding = nn.Embedding(max(total, 1), dim)  # all categorical values, flattened
        self.continuous_proj = nn.Sequential(nn.Linear(16, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.register_buffer("fourier_freqs", torch.pi * 2.0 ** torch.arange(8).float(), persistent=False)
        self.attr_identity = nn.Parameter(torch.randn(max(num_attrs, 1), dim) * 0.02)
        self.null_token = nn.Parameter(torch.randn(max(num_attrs, 1), dim) * 0.02)
        nn.init.normal_(self.value_embedding.weight, std=0.02)

    def forward(self, attr_index: torch.Tensor, attr_value: torch.Tensor, attr_present: torch.Tensor) -> torch.Tensor:
        batch, num_attrs = attr_index.shape
        if num_attrs == 0:
            return self.null_token.new_zeros(batch, 0, self.null_token.shape[-1])
        flat_index = (attr_index + self.value_offsets).clamp(max=self.value_embedding.num_embeddings - 1)
        categorical = self.value_embedding(flat_index)  # (B, A, D)
        angles = attr_value[..., None] * self.fourier_freqs  # (B, A, 8)
        continuous = self.continuous_proj(torch.cat([angles.sin(), angles.cos()], dim=-1))  # (B, A, D)
        value_tokens = torch.where(self.is_categorical[None, :, None], categorical, continuous)
        value_tokens = torch.where(attr_present[..., None], value_tokens, self.null_token[None])
        return value_tokens + self.attr_identity[None]  # (B, A, D)
