"""Checks for target plugin authors: does a provider keep the target contract?

    from mimbench.testing import check_target_provider
    check_target_provider(MyTarget(), name="my-target")
"""

from __future__ import annotations

import torch

from mimbench.errors import MimbenchError
from mimbench.targets.base import TargetSpec


class TargetContractError(MimbenchError):
    """A provider breaks the target contract; the message names it and what is wrong."""


def check_target_provider(provider, name: str | None = None, grid: tuple[int, int] | None = None,
                          batch: int = 2, seed: int = 0) -> None:
    """Raise TargetContractError naming `name` and the first broken rule, else return None.

    Checks: the spec's fields; output shape and dtype for its kind; the grid (against `grid`,
    the student's, when given); determinism; no autograd graph and no trainable parameters;
    finite values (token ids within the vocabulary).
    """
    label = f"target '{name or type(provider).__name__}'"

    def fail(what: str):
        raise TargetContractError(f"{label}: {what}.")

    spec = getattr(provider, "spec", None)
    if not isinstance(spec, TargetSpec):
        fail(f"spec must be a mimbench.targets.TargetSpec, not {type(spec).__name__}")
    if spec.dim <= 0 or spec.input_size <= 0:
        fail(f"spec.dim ({spec.dim}) and spec.input_size ({spec.input_size}) must be positive")
    if len(spec.grid) != 2 or min(spec.grid) <= 0:
        fail(f"spec.grid must be two positive ints, not {spec.grid}")
    if grid is not None and tuple(spec.grid) != tuple(grid):
        fail(f"its grid {spec.grid[0]}x{spec.grid[1]} differs from the student's {grid[0]}x{grid[1]}")
    params = list(provider.parameters()) if isinstance(provider, torch.nn.Module) else []
    if any(p.requires_grad for p in params):
        fail("some parameters require grad; a teacher must be frozen (requires_grad_(False))")

    g = torch.Generator().manual_seed(seed)
    view = torch.rand(batch, 3, spec.input_size, spec.input_size, generator=g)
    out = provider(view.clone().requires_grad_(True))
    if isinstance(out, torch.Tensor) and (out.requires_grad or out.grad_fn is not None):
        fail("its output carries an autograd graph; run the network under torch.inference_mode()")
    problem = output_problem(out, spec, batch)
    if problem:
        fail(problem)
    again = provider(view.clone())
    if not torch.equal(out, again):
        fail("two calls on the same view gave different outputs")


def output_problem(out, spec: TargetSpec, batch: int) -> str | None:
    """What is wrong with a provider's output for a batch of `batch` views, or None: its type,
    shape and dtype for the spec's kind and grid, finite features, token ids in the vocabulary."""
    n = spec.grid[0] * spec.grid[1]
    if not isinstance(out, torch.Tensor):
        return f"it returned {type(out).__name__}, not a tensor"
    if out.requires_grad:
        return "its output carries an autograd graph; run the network under torch.inference_mode()"
    if spec.kind == "features":
        if tuple(out.shape) != (batch, n, spec.dim):
            return f"features must have shape [B, N, dim] = {[batch, n, spec.dim]}, not {list(out.shape)}"
        if not out.is_floating_point():
            return f"features must be floating point, not {out.dtype}"
        if not torch.isfinite(out).all():
            return "its features hold NaN or inf"
        return None
    if tuple(out.shape) != (batch, n):
        return f"tokens must have shape [B, N] = {[batch, n]}, not {list(out.shape)}"
    if out.dtype != torch.int64:
        return f"tokens must be int64, not {out.dtype}"
    if out.min() < 0 or out.max() >= spec.dim:
        return f"token ids must lie in [0, {spec.dim}), got {int(out.min())}..{int(out.max())}"
    return None
