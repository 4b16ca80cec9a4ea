"""Where pre-training's targets come from: the config's target built (in-project teachers on
first use), frozen, resampled to the student's grid, held to the contract on every batch and,
with target.cache, computed once per image."""

from __future__ import annotations

import inspect
import logging
from typing import Callable

import torch

from mimbench import teachers
from mimbench.config import Config
from mimbench.errors import ConfigError, MimbenchError
from mimbench.memory import refuse_over_half
from mimbench.target_grid import ResampledFeatures, check_grid
from mimbench.targets import TARGETS
from mimbench.testing import TargetContractError, output_problem

log = logging.getLogger(__name__)


# what a run hands a factory that asks for it, beside the user's options (not options to set)
RUN_CONTEXT = ("student", "standardize", "target_loss", "progress")


def build_target_for(config: Config, progress: Callable | None = None, device: torch.device | None = None):
    """The target of `config` (build_provider), a feature target on another grid resampled to
    the student's (mimbench.target_grid); a provider that is a network is moved to `device`
    (a plugin's may be any callable)."""
    provider = build_provider(config, progress)
    if device is not None and isinstance(provider, torch.nn.Module):
        provider.to(device)
    if tuple(provider.spec.grid) != config.student.grid:
        g, s = provider.spec.grid, config.student.grid
        log.info("target '%s' gives a %dx%d grid; resampling it to the student's %dx%d",
                 config.target.name, g[0], g[1], s[0], s[1])
        provider = ResampledFeatures(provider, config.student.grid)
    return provider


def build_provider(config: Config, progress: Callable | None = None):
    """The provider config.target names (build_named), refused if it cannot serve the
    student's grid."""
    geometry = {"img_size": config.student.img_size, "patch_size": config.student.patch_size,
                "grid": config.student.grid}  # defaults a target's options may override
    run = (config.student, config.target.standardize, config.target.loss, progress)
    context = geometry | dict(zip(RUN_CONTEXT, run, strict=True))
    provider = build_named(config.target.name, config.target.options, context)
    check_grid(provider.spec, config.student.grid, config.target.name)
    return provider


def build_named(name: str, options: dict, context: dict):
    """Target `name` with `options`, given what of `context` (the student's img_size,
    patch_size, grid and config, whether the core standardises the targets, target.loss as
    target_loss, the progress callback) its factory takes and the options do not set;
    in-project teachers are built on first use. Refused if it trains."""
    factory = TARGETS.get(name).factory
    params = inspect.signature(factory).parameters
    given = {k: v for k, v in context.items() if k in params}
    provider = factory(**given | teachers.resolve_references(options, context.get("progress")))
    if isinstance(provider, torch.nn.Module) and any(p.requires_grad for p in provider.parameters()):
        raise TargetContractError(f"target '{name}' ({TARGETS.get(name).source}) "
                                  f"has parameters that require grad; a teacher must be frozen "
                                  f"(requires_grad_(False)), as mimbench.check_target_provider says.")
    return provider


class Targets:
    """The pre-training loop's targets: (teacher views [B, 3, T, T], image indices [B]) ->
    [B, N] token ids or [B, N, D] features. The provider is called as any provider is, on
    views; each output is held to the contract (shape, dtype, finite values, token range), and
    a failure is reported naming the target, never as divergence. With `cache`, each image's
    target is computed once and kept in memory (valid for fixed views only)."""

    def __init__(self, provider, name: str, cache: bool = False):
        self.provider, self.spec, self.name = provider, provider.spec, name
        self.store: dict[int, torch.Tensor] | None = {} if cache else None

    def __call__(self, views: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        if self.store is None:
            return self.checked(views)
        keys = indices.tolist()
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        if missing:
            for i, target in zip(missing, self.checked(views[missing])):
                self.store[keys[i]] = target
        return torch.stack([self.store[k] for k in keys])

    def checked(self, views: torch.Tensor) -> torch.Tensor:
        source = TARGETS.get(self.name).source
        try:
            out = self.provider(views)
        except MimbenchError:
            raise
        except Exception as e:
            raise TargetContractError(f"target '{self.name}' ({source}) failed on a batch of views: "
                                      f"{type(e).__name__}: {e}") from e
        problem = output_problem(out, self.spec, len(views))
        if problem:
            raise TargetContractError(f"target '{self.name}' ({source}) broke the target contract "
                                      f"on a batch of views: {problem}.")
        return out


def check_fixed_views(config: Config) -> None:
    d = config.data
    if tuple(d.crop_scale) != (1.0, 1.0) or d.hflip or d.color_jitter:
        raise ConfigError("target.cache=true needs fixed views: set data.crop_scale=[1, 1], "
                          "data.hflip=false and data.color_jitter=0, or set target.cache=false.")


def check_cache_fits(spec, images: int, budget: int | None = None) -> None:
    """Refuse, before training, a cache that would fill more than half of this machine's
    memory (float32 features, int64 token ids). Memory: images x tokens x channels (tiny d-VAE:
    10 MB; tiny CLIP stage 2: 650 MB)."""
    need = images * spec.grid[0] * spec.grid[1] * (spec.dim * 4 if spec.kind == "features" else 8)
    refuse_over_half(need, f"target.cache of {images:,} images' targets", "set target.cache=false", budget)
