"""Histograms of oriented gradients per patch: the target of MaskFeat (Wei et al., 2022)."""

import math

import torch
import torch.nn.functional as F

from mimbench.targets import TargetSpec


class HOGTarget:
    """Per patch, gradient orientations of the grey image in `bins` unsigned bins, weighted by
    gradient magnitude, for each of 2x2 cells; L2-normalised per patch."""

    kind = "features"  # what `mimbench targets list` shows without building the target

    def __init__(self, img_size: int = 224, patch_size: int = 16, bins: int = 9):
        if patch_size % 2:
            raise ValueError("patch_size must be even (2x2 cells per patch)")
        self.patch_size, self.bins = patch_size, bins
        side = img_size // patch_size
        self.spec = TargetSpec(kind="features", dim=4 * bins, grid=(side, side),
                               input_size=img_size, interpolation="bilinear", loss="mse")
        kernel = torch.tensor([[-1.0, 0.0, 1.0]])
        self.kx, self.ky = kernel.view(1, 1, 1, 3), kernel.view(1, 1, 3, 1)

    @torch.inference_mode()
    def __call__(self, view: torch.Tensor) -> torch.Tensor:
        grey = view.float().mean(1, keepdim=True)  # [B, 1, S, S]
        gx = F.conv2d(F.pad(grey, (1, 1, 0, 0), mode="replicate"), self.kx)
        gy = F.conv2d(F.pad(grey, (0, 0, 1, 1), mode="replicate"), self.ky)
        magnitude = torch.sqrt(gx**2 + gy**2)  # [B, 1, S, S]
        angle = torch.atan2(gy, gx) % math.pi  # unsigned, [0, pi)
        index = (angle / math.pi * self.bins).long().clamp_max(self.bins - 1)
        votes = torch.zeros(grey.shape[0], self.bins, *grey.shape[2:])
        votes.scatter_(1, index, magnitude)  # [B, bins, S, S]
        cell = self.patch_size // 2
        hist = F.avg_pool2d(votes, cell) * cell * cell  # [B, bins, 2h, 2w]
        b, _, h2, w2 = hist.shape
        hist = hist.view(b, self.bins, h2 // 2, 2, w2 // 2, 2)  # cells of each patch
        hist = hist.permute(0, 2, 4, 3, 5, 1).reshape(b, (h2 // 2) * (w2 // 2), 4 * self.bins)
        return F.normalize(hist, dim=-1)  # [B, N, 4 * bins]
