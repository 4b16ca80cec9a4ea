"""Several feature teachers at once (AM-RADIO, Theia): the student regresses their features
side by side, each teacher's on the student's grid, each token LayerNorm'd per teacher, and
the loss shared among the teachers by `weights`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mimbench.errors import ConfigError
from mimbench.target_grid import ResampledFeatures
from mimbench.targets import TARGETS, register_target
from mimbench.targets.base import TargetSpec
from mimbench.targets.frozen import FrozenTeacher


class MultiTeacher(FrozenTeacher):
    """[B, 3, T, T] views -> [B, N, sum of D_k]: teacher k's tokens, on its own view size,
    LayerNorm'd per token and scaled by sqrt(share_k * D / D_k), so that under an MSE (or
    smooth-L1) loss averaged over the D channels teacher k's part of the loss is share_k."""

    def __init__(self, providers: list, shares: list[float], grid: tuple[int, int], interpolation: str):
        super().__init__()
        self.providers = providers
        self.networks = nn.ModuleList([p for p in providers if isinstance(p, nn.Module)])  # moved with it
        dims = [p.spec.dim for p in providers]
        total = sum(dims)
        self.scales = [(share * total / dim) ** 0.5 for share, dim in zip(shares, dims)]
        self.spec = TargetSpec(kind="features", dim=total, grid=tuple(grid),
                               input_size=max(p.spec.input_size for p in providers),
                               interpolation=interpolation, loss="mse")
        self.freeze()

    def teach(self, view: Tensor) -> Tensor:
        parts = []
        for provider, scale in zip(self.providers, self.scales):
            size = provider.spec.input_size
            own = view if size == view.shape[-1] else F.interpolate(
                view, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
            tokens = provider(own).float()  # [B, N, D_k]
            parts.append(F.layer_norm(tokens, tokens.shape[-1:]) * scale)
        return torch.cat(parts, dim=-1)


@register_target("multi", kind="features")
def multi_target(teachers: list | None = None, weights: list | None = None, grid: tuple | None = None,
                 img_size: int | None = None, patch_size: int | None = None, student=None,
                 standardize: bool = False, target_loss: str | None = None, progress=None) -> MultiTeacher:
    """Several feature teachers at once, side by side. `teachers`: a list of target names or
    {name: ..., options} mappings (each a feature target); `weights`: each teacher's share of
    the loss. Without weights every channel counts alike (a teacher weighs by its width). The
    core's per-channel standardisation would undo weights, so with them it must be off
    (target.standardize=false): each teacher is normalised here, per token."""
    from mimbench.targets.source import build_named

    if not teachers or len(teachers) < 2:
        raise ConfigError("the multi target needs two or more teachers: --set 'target.teachers=[clip, "
                          "{name: timm, model: ...}]'.")
    if target_loss not in (None, "mse", "smooth_l1"):
        raise ConfigError(f"the multi target shares the loss among its teachers channel by channel, "
                          f"which needs target.loss mse or smooth_l1, not {target_loss!r}.")
    if standardize and weights is not None:
        raise ConfigError("the multi target weighs the teachers by scaling their tokens, which the "
                          "core's per-channel standardisation would undo; add --set target.standardize=false.")
    if weights is not None and (not isinstance(weights, list) or len(weights) != len(teachers)
                                or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0
                                        for w in weights)):
        raise ConfigError(f"target.weights must give one positive weight per teacher ({len(teachers)}), "
                          f"not {weights!r}.")
    context = {"grid": grid, "img_size": img_size, "patch_size": patch_size, "student": student,
               "standardize": False, "progress": progress}  # each teacher is normalised here
    providers = []
    for i, entry in enumerate(teachers):
        entry = {"name": entry} if isinstance(entry, str) else dict(entry) if isinstance(entry, dict) else {}
        if "name" not in entry:
            raise ConfigError(f"target.teachers[{i}] must be a target's name or a mapping with name: and "
                              f"its options, not {teachers[i]!r}.")
        name = entry.pop("name")
        entry = TARGETS.checked_options(name, entry, f"target.teachers[{i}]")
        provider = build_named(name, entry, context)
        if provider.spec.kind != "features":
            raise ConfigError(f"teacher '{name}' gives token ids; the multi target regresses features only.")
        if tuple(provider.spec.grid) != tuple(grid):
            provider = ResampledFeatures(provider, grid)
        providers.append(provider)
    dims = [p.spec.dim for p in providers]
    shares = [d / sum(dims) for d in dims] if weights is None else [w / sum(weights) for w in weights]
    return MultiTeacher(providers, shares, grid, providers[0].spec.interpolation)
