"""The one learning-rate schedule of mimbench: pre-training, the evaluations' trained heads and
towers, the linear probe and the in-project teachers all read their rate from `lr_at`, once
per optimizer step. A stateless function of the step, so resuming needs no scheduler state."""

from __future__ import annotations

import math


def lr_at(step: int, total: int, warmup: int, peak: float, floor: float = 0.0,
          decay: str = "cosine", power: float = 1.0) -> float:
    """The rate at optimizer step `step` (0-based) of `total`: a linear ramp to `peak` over the
    first `warmup` steps, then `decay` ("cosine", or "poly" with `power`) from `peak` to `floor`
    at step `total`."""
    if decay not in ("cosine", "poly"):
        raise ValueError(f"unknown learning-rate decay {decay!r}; use 'cosine' or 'poly'.")
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    shape = (1 - progress) ** power if decay == "poly" else 0.5 * (1 + math.cos(math.pi * progress))
    return floor + (peak - floor) * shape
