"""The target contract: what a teacher tells the student about each patch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")  # what the core can resize with
FEATURE_LOSSES = ("cosine", "mse", "smooth_l1")  # regression losses; token ids take "ce" only


@dataclass(frozen=True)
class TargetSpec:
    kind: Literal["features", "tokens"]  # regress vectors, or classify ids
    dim: int  # feature size, or vocabulary size
    grid: tuple[int, int]  # features: mapped onto the student's patch grid; tokens: must equal it
    input_size: int  # side of the teacher view, pixels
    interpolation: str = "bicubic"  # how the core resizes the crop for the teacher view
    loss: str | None = None  # the default loss: features "cosine" (or mse, smooth_l1); tokens "ce"

    def __post_init__(self):
        if self.kind not in ("features", "tokens"):
            raise ValueError(f"TargetSpec.kind must be 'features' or 'tokens', not {self.kind!r}")
        if self.loss is None:
            object.__setattr__(self, "loss", "ce" if self.kind == "tokens" else "cosine")
        allowed = ("ce",) if self.kind == "tokens" else FEATURE_LOSSES
        if self.loss not in allowed:
            raise ValueError(f"TargetSpec.loss for {self.kind} must be {' or '.join(allowed)}, "
                             f"not {self.loss!r}")
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
