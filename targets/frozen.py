"""Frozen teachers: the base every built-in provider is built on, and per-patch features of a
frozen network (what the `clip` and `timm` targets share)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mimbench.errors import ConfigError
from mimbench.targets.base import TargetSpec

NORMALIZATIONS = ("none", "layernorm", "l2")


def normalize_tokens(tokens: Tensor, how: str) -> Tensor:
    """[B, N, D] -> [B, N, D], each token normalised on its own."""
    if how == "layernorm":
        return F.layer_norm(tokens, tokens.shape[-1:], eps=1e-6)
    if how == "l2":
        return F.normalize(tokens, dim=-1)
    return tokens


def block_index(layer: int, depth: int, name: str) -> int:
    """A zero-based block index, negative counting from the end, checked against `depth`."""
    if not -depth <= layer < depth:
        raise ConfigError(f"target.layer={layer} is out of range for {name}, which has {depth} "
                          f"blocks (use 0..{depth - 1} or -1..-{depth}).")
    return layer % depth


class FrozenTeacher(nn.Module):
    """A provider that never trains: `teach(view)` runs under inference mode (no autograd
    graph); after `freeze()` no parameter requires grad, and the module stays in eval mode
    whatever the caller asks (`train()` changes nothing). Subclasses build their networks,
    call `self.freeze()` at the end of __init__ and implement `teach`."""

    def freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, view: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.teach(view)

    def teach(self, view: Tensor) -> Tensor:
        raise NotImplementedError


class FrozenFeatures(FrozenTeacher):
    """Runs `extract` (image normalised with mean/std -> [B, N, D] tokens) on a frozen network."""

    def __init__(self, network: nn.Module, extract: Callable[[Tensor], Tensor], spec: TargetSpec,
                 mean: Sequence[float], std: Sequence[float], normalize: str = "none"):
        super().__init__()
        if normalize not in NORMALIZATIONS:
            raise ConfigError(f"target.normalize must be one of {', '.join(NORMALIZATIONS)}, "
                              f"not {normalize!r}.")
        self.network = network
        self.extract = extract
        self.spec = spec
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    def teach(self, view: Tensor) -> Tensor:
        x = (view - self.mean) / self.std  # [B, 3, S, S]
        tokens = self.extract(x)  # [B, N, D]
        return normalize_tokens(tokens.float(), self.normalize)

