"""Which patches the student does not see: BEiT's blockwise masking and uniform random masking.

Each masker is called once per image with an optional torch.Generator and returns a bool
tensor of shape `grid` (True = masked). Randomness is drawn from one seed taken from the
generator, so a mask depends only on that generator's state.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch


def _python_rng(generator: torch.Generator | None) -> random.Random:
    seed = torch.randint(0, 2**62, (1,), generator=generator).item()
    return random.Random(seed)


class BlockMasking:
    """BEiT's blockwise masking: place random rectangles until `num_masked` patches are covered.

    Per block: up to 10 tries of area ~ U[min_block, remaining], aspect ratio log-uniform in
    [min_aspect, 1/min_aspect]; a block must fit strictly inside the grid and add between 1 and
    `remaining` new patches. Stops early when a block cannot be placed; never masks more than
    `num_masked`. With `exact`, patches chosen uniformly among the unmasked ones then bring
    every mask to exactly `num_masked` (the mae student needs one visible count per batch).
    """

    def __init__(self, grid=(14, 14), num_masked=75, min_block=16, min_aspect=0.3, exact=False):
        self.height, self.width = grid
        self.num_masked = num_masked
        self.exact = exact
        self.min_block = min_block
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
        if not 0 <= num_masked <= self.height * self.width:
            raise ValueError(f"cannot mask {num_masked} patches of a {grid} grid")

    def blocks(self, rng: random.Random) -> list[tuple[int, int, int, int]]:
        """Sample a mask as the list of blocks (top, left, h, w) that added patches to it."""
        return self._sample(rng)[1]

    def _sample(self, rng: random.Random) -> tuple[list[list[bool]], list[tuple[int, int, int, int]]]:
        covered = [[False] * self.width for _ in range(self.height)]  # [H][W]
        count, placed = 0, []
        while count < self.num_masked:
            block, added = self._place_block(covered, self.num_masked - count, rng)
            if added == 0:
                break
            count += added
            placed.append(block)
        return covered, placed

    def _place_block(self, covered, remaining: int, rng: random.Random):
        for _ in range(10):
            area = rng.uniform(self.min_block, remaining)
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if h >= self.height or w >= self.width:
                continue
            top = rng.randint(0, self.height - h)
            left = rng.randint(0, self.width - w)
            rows = covered[top:top + h]
            new = sum(row[left:left + w].count(False) for row in rows)
            if 0 < new <= remaining:
                for row in rows:
                    row[left:left + w] = [True] * w
                return (top, left, h, w), new
        return None, 0

    def __call__(self, generator: torch.Generator | None = None) -> torch.Tensor:
        rng = _python_rng(generator)
        covered, _ = self._sample(rng)
        mask = np.array(covered, dtype=bool)  # [H, W]; one conversion, no per-block writes
        short = self.num_masked - int(mask.sum())
        if self.exact and short:
            free = np.flatnonzero(~mask)
            mask.flat[rng.sample(list(free), short)] = True
        return torch.from_numpy(mask)


class RandomMasking:
    """MAE/SimMIM-style masking: exactly `num_masked` patches chosen uniformly."""

    def __init__(self, grid=(14, 14), num_masked=75):
        self.grid = tuple(grid)
        self.num_masked = num_masked
        if not 0 <= num_masked <= grid[0] * grid[1]:
            raise ValueError(f"cannot mask {num_masked} patches of a {grid} grid")

    def __call__(self, generator: torch.Generator | None = None) -> torch.Tensor:
        n = self.grid[0] * self.grid[1]
        order = torch.randperm(n, generator=generator)
        mask = torch.zeros(n, dtype=torch.bool)
        mask[order[:self.num_masked]] = True
        return mask.view(self.grid)  # [H, W]


def build_masking(config, student):
    """The masker a MaskConfig describes, for a StudentConfig's grid and style."""
    grid = student.grid
    count = config.count(grid)
    if config.kind == "block":
        return BlockMasking(grid, count, config.min_block, config.min_aspect,
                            exact=student.style == "mae")
    return RandomMasking(grid, count)
