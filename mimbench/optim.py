"""AdamW with torch's fused kernel wherever the parameters' device has one.

On this 2-core CPU the fused step took 2.8 ms against 8.3 ms (foreach) for the tiny student
and 0.20 s against 1.36 s for ViT-B/16 (docs/performance.md)."""

from __future__ import annotations

from typing import Iterable

import torch

FUSED_DEVICES = ("cpu", "cuda")


def adamw(params: Iterable, **options) -> torch.optim.AdamW:
    """torch.optim.AdamW(params, **options), fused when every parameter is a float tensor on
    a device with a fused kernel; `params` is tensors or parameter groups, as for AdamW."""
    params = list(params)
    tensors = [p for item in params for p in (item["params"] if isinstance(item, dict) else [item])]
    fused = bool(tensors) and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in tensors)
    return torch.optim.AdamW(params, fused=fused, **options)
