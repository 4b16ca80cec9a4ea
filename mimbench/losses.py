"""Losses on masked positions only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mimbench.errors import ConfigError
from mimbench.targets.base import FEATURE_LOSSES


def check_loss(loss: str, kind: str, target_name: str) -> None:
    if kind == "tokens" and loss != "ce":
        raise ConfigError(f"target '{target_name}' gives token ids, which need target.loss=ce, "
                          f"not {loss!r}.")
    if kind == "features" and loss not in FEATURE_LOSSES:
        raise ConfigError(f"target '{target_name}' gives features; target.loss must be one of "
                          f"{', '.join(FEATURE_LOSSES)}, not {loss!r}.")


def channel_moments(targets: list[Tensor]) -> Tensor:
    """[count, sum over tokens (D), sum of squares (D)] of [B, N, D] targets, in float64,
    so that moments of several micro-batches and processes add up."""
    flat = torch.cat([t.flatten(0, 1) for t in targets]).double()  # [sum B*N, D]
    count = flat.new_full((1,), flat.shape[0])
    return torch.cat([count, flat.sum(0), flat.square().sum(0)])  # [1 + 2D]


def standardize_channels(target: Tensor, moments: Tensor, eps: float = 1e-6) -> Tensor:
    """[B, N, D] -> each channel to zero mean, unit variance under `moments` (channel_moments
    of the whole effective batch, so accumulation and processes do not change the targets)."""
    d = target.shape[-1]
    count, total, squares = moments[0], moments[1:1 + d], moments[1 + d:]
    mean = total / count
    var = (squares / count - mean.square()).clamp_min(0)
    return ((target - mean) / (var + eps).sqrt()).float()


def token_losses(pred: Tensor, target: Tensor, mask: Tensor, loss: str) -> Tensor:
    """The loss of each masked token, [M]: pred [B, N, D]; target [B, N, D] float or [B, N]
    int64; mask [B, N] bool. A batch's loss is their sum over its masked-token count."""
    p, t = pred[mask].float(), target[mask]  # [M, D], [M, D] or [M]
    if loss == "ce":
        return F.cross_entropy(p, t, reduction="none")
    if loss == "cosine":
        return 1 - F.cosine_similarity(p, t, dim=-1)
    if loss == "mse":
        return F.mse_loss(p, t, reduction="none").mean(-1)
    if loss == "smooth_l1":
        return F.smooth_l1_loss(p, t, reduction="none").mean(-1)
    raise ValueError(f"unknown loss {loss!r}")
