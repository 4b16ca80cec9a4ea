"""The one loop that fits a model by gradient steps: the evaluations' heads and towers, the
linear probe's SGD/LARS head and every in-project teacher. (Pre-training has its own loop,
engine.py: masking, distributed batches and run-directory checkpoints.)

A step sets each parameter group's rate to rate_at(step) x the group's "lr_scale" (1 if it
has none), clears the gradients, calls loss_of(step) (forward and backward; returns the
loss), then steps the optimizer. Ctrl-C or SIGTERM stops the loop after the step in flight:
with a `Resumable` it saves its state and the next call continues exactly where it stopped;
without one it raises KeyboardInterrupt."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from mimbench import checkpoint
from mimbench.errors import Interrupted
from mimbench.stopping import StopRequest

Progress = Callable[[str, int, int, dict], None]  # (task, step, total, metrics)


class Resumable:
    """A fitting loop's whole state in one file: the modules, the optimizer, torch's and a
    numpy generator's random states, the step and the losses so far. Saved every `every_s`
    seconds and on a stop (atomically), so a kill loses at most that much work."""

    def __init__(self, path: Path, modules: dict[str, nn.Module],
                 rng: np.random.Generator | None = None, every_s: float = 60.0):
        self.path, self.modules, self.rng, self.every_s = Path(path), modules, rng, every_s
        self._saved_at = time.monotonic()

    def restore(self, optimizer) -> tuple[int, list[float]]:
        """The step to start from and the losses before it (0 and [] without a saved state)."""
        if not self.path.exists():
            return 0, []
        state = checkpoint.load(self.path)
        for name, module in self.modules.items():
            module.load_state_dict(state["modules"][name])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if self.rng is not None:
            self.rng.bit_generator.state = state["numpy_rng"]
        return state["step"], list(state["losses"])

    def save(self, optimizer, step: int, losses: list[float]) -> None:
        checkpoint.save_atomic({"step": step, "losses": losses, "optimizer": optimizer.state_dict(),
                                "modules": {n: m.state_dict() for n, m in self.modules.items()},
                                "torch_rng": torch.get_rng_state(),
                                "numpy_rng": self.rng.bit_generator.state if self.rng else None},
                               self.path)
        self._saved_at = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._saved_at >= self.every_s


def fit(optimizer: torch.optim.Optimizer, loss_of: Callable[[int], float], steps: int,
        rate_at: Callable[[int], float], progress: Progress | None = None, task: str = "training",
        resumable: Resumable | None = None) -> list[float]:
    """Run optimizer steps `steps` times (from where `resumable` stopped); the loss per step."""
    start, losses = resumable.restore(optimizer) if resumable else (0, [])
    with StopRequest() as stop:
        for step in range(start, steps):
            if stop.asked:
                if resumable is None:
                    raise KeyboardInterrupt
                resumable.save(optimizer, step, losses)
                raise Interrupted(f"{task} stopped at step {step} of {steps}; its state is saved "
                                  f"in {resumable.path.parent}: the same command continues it.")
            for group in optimizer.param_groups:
                group["lr"] = rate_at(step) * group.get("lr_scale", 1.0)
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss_of(step))
            optimizer.step()
            if progress:
                progress(task, step + 1, steps, {"loss": losses[-1]})
            if resumable and resumable.due() and step + 1 < steps:
                resumable.save(optimizer, step + 1, losses)
    return losses
