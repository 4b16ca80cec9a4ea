"""What fine-tuning and segmentation share: layer-wise lr decay, AdamW without decay on
norms/biases/embeddings, warmup then cosine or poly, batches in device-sized chunks, all
through mimbench.fitting's one loop."""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterator

from torch import nn

from mimbench.distributed import autocast, to_device
from mimbench.fitting import fit
from mimbench.lr_schedule import lr_at
from mimbench.optim import adamw


def set_drop_path(encoder: nn.Module, rate: float) -> None:
    """Stochastic depth rising linearly to `rate` at the last block, by timm's own rule.

    Set here, not when the encoder is built: an evaluation receives encoders built elsewhere (a
    run's checkpoint, an exported folder, a timm name, a target's tower), and its protocol card
    states the rate it trained with."""
    from timm.layers import DropPath, calculate_drop_path_rates

    for block, p in zip(encoder.blocks, calculate_drop_path_rates(rate, len(encoder.blocks))):
        for name in ("drop_path1", "drop_path2", "drop_path"):
            if hasattr(block, name):
                setattr(block, name, DropPath(p) if p > 0 else nn.Identity())


def train(model: nn.Module, groups: list[dict], batches: Iterator, loss_fn: Callable, steps: int,
          lr: float, warmup: int, schedule: str = "cosine", power: float = 1.0,
          progress=None, task: str = "training", amp: str = "none",
          device_batch: int | None = None) -> list[float]:
    """Run `steps` AdamW steps of loss_fn(model, batch), under bf16 autocast when `amp` is
    "bf16" (the paper preset's optim.amp); returns the loss per step. A batch larger than
    `device_batch` goes through the model in chunks of at most that many, their gradients
    accumulated with weights chunk / batch: the step of the whole batch (a mean loss), in the
    memory of a chunk (batch-wise statistics, BatchNorm and mixup, are then per chunk, as per
    GPU in the references' distributed runs)."""
    optimizer = adamw(groups, lr=lr)
    device = next(model.parameters()).device  # batches come as CPU tensors and go where the model is

    def loss_of(step: int) -> float:
        batch = next(batches)
        size = len(batch[0])
        loss_sum = 0.0
        for start in range(0, size, device_batch or size):
            chunk = [to_device(t[start:start + (device_batch or size)], device) for t in batch]
            with autocast(device, amp):
                loss = loss_fn(model, chunk) * (len(chunk[0]) / size)
            loss.backward()
            loss_sum += loss.item()
        return loss_sum

    model.train()
    rate_at = partial(lr_at, total=steps, warmup=warmup, peak=lr, decay=schedule, power=power)
    losses = fit(optimizer, loss_of, steps, rate_at, progress, task)
    model.eval()
    return losses


def endless(make_batches: Callable[[int], Iterator]) -> Iterator:
    """Epoch after epoch of make_batches(epoch)."""
    epoch = 0
    while True:
        yield from make_batches(epoch)
        epoch += 1
