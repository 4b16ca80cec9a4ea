"""Per-patch features of a frozen network: what the `clip` and `timm` targets share."""

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


class FrozenFeatures(nn.Module):
    """Runs `extract` (image normalised with mean/std -> [B, N, D] tokens) on a frozen network.

    The network stays in eval mode with no gradients whatever the caller does.
    """

    def __init__(self, network: nn.Module, extract: Callable[[Tensor], Tensor], spec: TargetSpec,
                 mean: Sequence[float], std: Sequence[float], normalize: str = "none"):
        super().__init__()
        if normalize not in NORMALIZATIONS:
            raise ConfigError(f"target.normalize must be one of {', '.join(NORMALIZATIONS)}, "
                              f"not {normalize!r}.")
        self.network = network.requires_grad_(False)
        self.extract = extract
        self.spec = spec
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.train(False)

    def train(self, mode: bool = True):
        return super().train(False)  # a teacher is always in eval mode

    @torch.inference_mode()
    def forward(self, view: Tensor) -> Tensor:
        x = (view - self.mean) / self.std  # [B, 3, S, S]
        tokens = self.extract(x)  # [B, N, D]
        return normalize_tokens(tokens.float(), self.normalize)

