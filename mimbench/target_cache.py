"""target.cache: each image's target computed once and kept in memory.

Valid only when an image's teacher view never changes (no random crop, flip or colour
jitter), as on the tiny world; then the teacher runs once per image instead of once per
step. Memory: images x tokens x channels in the target's dtype (tiny d-VAE: 10 MB; tiny
CLIP stage 2: 650 MB)."""

from __future__ import annotations

import os

import torch

from mimbench.config import Config
from mimbench.errors import ConfigError


def check_fixed_views(config: Config) -> None:
    d = config.data
    if tuple(d.crop_scale) != (1.0, 1.0) or d.hflip or d.color_jitter:
        raise ConfigError("target.cache=true needs fixed views: set data.crop_scale=[1, 1], "
                          "data.hflip=false and data.color_jitter=0, or set target.cache=false.")


def check_cache_fits(spec, images: int, budget: int | None = None) -> None:
    """Refuse, before training, a cache that would fill more than half of this machine's
    memory (float32 features, int64 token ids)."""
    need = images * spec.grid[0] * spec.grid[1] * (spec.dim * 4 if spec.kind == "features" else 8)
    budget = budget or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    if need > budget:
        raise ConfigError(f"target.cache would hold {need / 2**30:.1f} GiB of targets for {images:,} "
                          f"images, more than half of this machine's memory; set target.cache=false.")


class TargetCache:
    """Wraps a target provider: (teacher views [B, 3, T, T], image indices [B]) -> targets,
    calling the provider only for images it has not seen."""

    def __init__(self, provider):
        self.provider = provider
        self.spec = provider.spec
        self.store: dict[int, torch.Tensor] = {}

    def __call__(self, views: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        keys = indices.tolist()
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        if missing:
            fresh = self.provider(views[missing])  # [M, N, D] or [M, N]
            for i, target in zip(missing, fresh):
                self.store[keys[i]] = target
        return torch.stack([self.store[k] for k in keys])
