"""A feature target whose token grid differs from the student's patch grid, resampled to it.

A ResNet teacher's stages each have their own resolution (the tiny CLIP at 64 px: stage 1
16x16, stage 2 8x8, stage 3 4x4), so ablating the target layer changes the grid. The core
maps each feature map onto the student's grid: area averaging where the teacher's grid is
finer (each student patch gets the mean of the teacher cells it covers), bilinear
interpolation where it is coarser. Token ids cannot be averaged, so token targets must match.
"""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from torch import Tensor

from mimbench.errors import ConfigError
from mimbench.targets.frozen import FrozenTeacher


def check_grid(spec, student_grid: tuple[int, int], target_name: str) -> None:
    """Refuse a grid the core cannot map onto the student's."""
    if tuple(spec.grid) == tuple(student_grid):
        return
    g, s = spec.grid, student_grid
    if spec.kind == "tokens":
        raise ConfigError(f"target '{target_name}' gives a {g[0]}x{g[1]} grid of token ids but the "
                          f"student has {s[0]}x{s[1]} patches, and token ids cannot be resampled; "
                          f"change the target's input size or student.img_size/patch_size so "
                          f"they agree.")
    if any(a % b and b % a for a, b in zip(g, s)):
        raise ConfigError(f"target '{target_name}' gives a {g[0]}x{g[1]} feature grid, which does not "
                          f"tile the student's {s[0]}x{s[1]} patches (one side must divide the "
                          f"other); change the target's input size or student.img_size/patch_size.")


class ResampledFeatures(FrozenTeacher):
    """Wraps a feature target: its [B, h*w, D] tokens -> [B, H*W, D] on the student's grid.
    A module, so that moving it to a device moves a provider that is one."""

    def __init__(self, provider, grid: tuple[int, int]):
        super().__init__()
        self.provider = provider
        self.source_grid = tuple(provider.spec.grid)
        self.spec = dataclasses.replace(provider.spec, grid=tuple(grid))
        self.freeze()

    def teach(self, view: Tensor) -> Tensor:
        tokens = self.provider(view)  # [B, h*w, D]
        (h, w), (H, W) = self.source_grid, self.spec.grid
        fmap = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)  # [B, D, h, w]
        if H <= h and W <= w:
            fmap = F.adaptive_avg_pool2d(fmap, (H, W))  # sides divide: exact block means
        else:
            fmap = F.interpolate(fmap, size=(H, W), mode="bilinear", align_corners=False)
        return fmap.flatten(2).transpose(1, 2)  # [B, H*W, D]
