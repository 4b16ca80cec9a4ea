"""Losses on masked positions only."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from mimbench.errors import ConfigError

FEATURE_LOSSES = ("cosine", "mse", "smooth_l1")


def check_loss(loss: str, kind: str, target_name: str) -> None:
    if kind == "tokens" and loss != "ce":
        raise ConfigError(f"target '{target_name}' gives token ids, which need target.loss=ce, "
                          f"not {loss!r}.")
    if kind == "features" and loss not in FEATURE_LOSSES:
        raise ConfigError(f"target '{target_name}' gives features; target.loss must be one of "
                          f"{', '.join(FEATURE_LOSSES)}, not {loss!r}.")


def standardize_channels(target: Tensor, eps: float = 1e-6) -> Tensor:
    """[B, N, D] -> each channel to zero mean, unit variance over all B * N tokens."""
    flat = target.flatten(0, 1)  # [B*N, D]
    mean, var = flat.mean(0), flat.var(0, unbiased=False)
    return (target - mean) / (var + eps).sqrt()


def masked_loss(pred: Tensor, target: Tensor, mask: Tensor, loss: str) -> Tensor:
    """pred [B, N, D]; target [B, N, D] float or [B, N] int64; mask [B, N] bool."""
    p, t = pred[mask].float(), target[mask]  # [M, D], [M, D] or [M]
    if loss == "ce":
        return F.cross_entropy(p, t)
    if loss == "cosine":
        return (1 - F.cosine_similarity(p, t, dim=-1)).mean()
    if loss == "mse":
        return F.mse_loss(p, t)
    if loss == "smooth_l1":
        return F.smooth_l1_loss(p, t)
    raise ValueError(f"unknown loss {loss!r}")
