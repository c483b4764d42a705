"""The embedder protocol: uint8 RGB frames ``(N, H, W, 3)`` -> unit-norm float32 ``(N, D)``.

An embedder's :class:`EmbedderSpec` (name, dimension, preprocessing) is stored in every index
manifest; two specs must be equal for their embeddings to be comparable (DESIGN.md §5).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class EmbedderSpec:
    """What makes embeddings comparable: the descriptor, its dimension and its preprocessing.

    ``preprocessing`` is a JSON-serializable dict (resize rule, normalization, model file
    checksum, ...). Equality of specs is the compatibility test used by the index.
    """

    name: str
    dim: int
    preprocessing: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "preprocessing": self.preprocessing}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EmbedderSpec:
        return cls(str(data["name"]), int(data["dim"]), dict(data.get("preprocessing", {})))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EmbedderSpec):
            return NotImplemented
        canon = lambda s: json.dumps(s.to_json(), sort_keys=True)
        return canon(self) == canon(other)

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_json(), sort_keys=True))


@runtime_checkable
class Embedder(Protocol):
    """Maps frames to descriptors. Implementations batch internally and are thread-safe to
    call from one thread at a time."""

    @property
    def spec(self) -> EmbedderSpec: ...

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """uint8 ``(N, H, W, 3)`` RGB (frames of one call may be of one size only) ->
        float32 ``(N, spec.dim)`` with unit rows. ``N == 0`` gives ``(0, dim)``."""
        ...
