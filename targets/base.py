"""The target contract: what a teacher tells the student about each patch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from torch import Tensor

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")  # what the core can resize with


@dataclass(frozen=True)
class TargetSpec:
    kind: Literal["features", "tokens"]  # regress vectors, or classify ids
    dim: int  # feature size, or vocabulary size
    grid: tuple[int, int]  # features: mapped onto the student's patch grid; tokens: must equal it
    input_size: int  # side of the teacher view, pixels
    interpolation: str = "bicubic"  # how the core resizes the crop for the teacher view
    loss: str = "cosine"  # default loss; "ce" for tokens

    def __post_init__(self):
        if self.kind not in ("features", "tokens"):
            raise ValueError(f"TargetSpec.kind must be 'features' or 'tokens', not {self.kind!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"TargetSpec.interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                             f"not {self.interpolation!r}")


@runtime_checkable
class TargetProvider(Protocol):
    """A frozen teacher.

    view: float [B, 3, S, S], RGB in [0, 1], S = spec.input_size. Returns [B, N, dim] float
    (features) or [B, N] int64 (tokens), N = grid[0] * grid[1]. A provider owns its own input
    normalisation, never sees the mask, and never builds an autograd graph.
    """

    spec: TargetSpec

    def __call__(self, view: Tensor) -> Tensor: ...
