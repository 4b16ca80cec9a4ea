"""The one learning-rate schedule of mimbench: pre-training, the evaluations' trained heads and
towers, the linear probe and the in-project teachers all read their rate from `lr_at`, once
per optimizer step. A stateless function of the step, so resuming needs no scheduler state."""

from __future__ import annotations

import math


def lr_at(step: int, total: int, warmup: int, peak: float, floor: float = 0.0,
          decay: str = "cosine", power: float = 1.0, ramp_over_decay: bool = False) -> float:
    """The rate at optimizer step `step` (0-based) of `total`: a linear ramp to `peak` over the
    first `warmup` steps, then `decay` ("cosine", "poly" with `power`, or "constant") from
    `peak` to `floor` at step `total`. With `ramp_over_decay` the decay starts at step 0 and
    the ramp multiplies it (the shape the tiny CLIP teacher was trained with)."""
    if decay not in ("cosine", "poly", "constant"):
        raise ValueError(f"unknown learning-rate decay {decay!r}; use 'cosine', 'poly' or 'constant'.")
    if ramp_over_decay:
        ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
        return ramp * lr_at(step, total, 0, peak, floor, decay, power)
    if step < warmup:
        return peak * (step + 1) / warmup
    if decay == "constant":
        return peak
    progress = (step - warmup) / max(1, total - warmup)
    shape = (1 - progress) ** power if decay == "poly" else 0.5 * (1 + math.cos(math.pi * progress))
    return floor + (peak - floor) * shape
