"""Optimisation: the steps and rates a config implies, the batch split over processes, the
parameter groups (weight decay, BEiT's layer-wise lr decay) and AdamW.

AdamW uses torch's fused kernel wherever the parameters' device has one: on this 2-core CPU
the fused step took 2.8 ms against 8.3 ms (foreach) for the tiny student and 0.20 s against
1.36 s for ViT-B/16 (docs/performance.md)."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from mimbench import distributed
from mimbench.config import Config
from mimbench.errors import ConfigError

FUSED_DEVICES = ("cpu", "cuda")


def adamw(params: Iterable, **options) -> torch.optim.AdamW:
    """torch.optim.AdamW(params, **options), fused when every parameter is a float tensor on
    a device with a fused kernel; `params` is tensors or parameter groups, as for AdamW."""
    params = list(params)
    tensors = [p for item in params for p in (item["params"] if isinstance(item, dict) else [item])]
    fused = bool(tensors) and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in tensors)
    return torch.optim.AdamW(params, fused=fused, **options)


def exempt_from_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norms, position embeddings, relative position bias tables and tokens take no
    weight decay, in pre-training and fine-tuning alike."""
    return (param.ndim <= 1 or name.endswith(".bias") or "pos_embed" in name or "token" in name
            or "relative_position_bias_table" in name)


def layer_id(name: str, depth: int) -> int:
    """BEiT's rule (get_num_layer_for_vit): 0 for embeddings, i + 1 for block i, depth + 1 for
    everything after the blocks and for BEiT's shared relative position bias."""
    if name.startswith(("cls_token", "mask_token", "pos_embed", "patch_embed", "reg_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0,
                 head: nn.Module | None = None) -> list[dict]:
    """AdamW groups for `model` (and a `head` on it): weight decay except where
    exempt_from_weight_decay says; with layer_decay < 1, `model` is a ViT encoder and its layer
    l (layer_id) gets lr scale layer_decay ** (depth + 1 - l), the head scale 1. Groups come
    in (layer, decayed first) order; each holds its parameters in the model's order."""
    depth = len(model.blocks) if layer_decay != 1 else 0
    named = [(n, p, layer_id(n, depth) if layer_decay != 1 else 0) for n, p in model.named_parameters()]
    named += [(f"head.{n}", p, depth + 1) for n, p in (head.named_parameters() if head else [])]
    groups: dict[tuple[int, bool], dict] = {}
    for name, param, lid in named:
        no_decay = exempt_from_weight_decay(name, param)
        group = groups.setdefault((lid, no_decay), {"params": [], "lr_scale": layer_decay ** (depth + 1 - lid),
                                                    "weight_decay": 0.0 if no_decay else weight_decay})
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def in_steps(steps: int | None, epochs: float | None, dataset_size: int, batch: int) -> int | None:
    """`steps` if set, else `epochs` passes over `dataset_size` images in whole batches of
    `batch` (at least one step an epoch); None when neither is set. Every epochs-to-steps
    conversion of mimbench is this one."""
    if steps is not None:
        return steps
    return None if epochs is None else round(epochs * max(1, dataset_size // batch))


def schedule(config: Config, dataset_size: int, effective_batch: int | None = None) -> dict:
    """Total and warmup optimizer steps, effective batch and peak lr the config implies (on one
    process, unless the launch's `effective_batch` is given)."""
    o = config.optim
    batch = effective_batch or o.effective_batch or o.batch_size * o.accum_steps
    total = in_steps(o.steps, o.epochs, dataset_size, batch)
    if total is None:
        raise ConfigError("set optim.steps or optim.epochs.")
    warmup = in_steps(o.warmup_steps, o.warmup_epochs or 0, dataset_size, batch)
    lr = o.lr * batch / o.lr_base_batch if o.lr_base_batch else o.lr
    return {"total_steps": total, "warmup_steps": min(warmup, total), "effective_batch": batch,
            "peak_lr": lr, "steps_per_epoch": in_steps(None, 1, dataset_size, batch)}


def pretraining_optimizer(student: nn.Module, config: Config) -> torch.optim.Optimizer:
    return adamw(param_groups(student, config.optim.weight_decay), lr=config.optim.lr,
                 betas=config.optim.betas)


def split_batch(effective: int, processes: int, device_limit: int) -> tuple[int, int]:
    """(images per forward on one device, accumulation steps) that make `effective` images per
    optimizer step over `processes` processes: each process's share in the fewest accumulation
    steps that keep a forward within `device_limit` images and divide the share evenly."""
    if effective < processes:
        raise ConfigError(f"the effective batch {effective} leaves a per-device batch of 0 on "
                          f"{processes} processes; use fewer processes or a larger effective batch.")
    if effective % processes:
        raise ConfigError(f"the effective batch {effective} does not split evenly over {processes} "
                          f"process(es); use a multiple of {processes} or another process count.")
    share = effective // processes
    accum = next(a for a in range(-(-share // device_limit), share + 1) if share % a == 0)
    return share // accum, accum


def batch_split(config: Config, world: distributed.World, saved: dict | None) -> tuple[int, int]:
    """(optim.batch_size, optim.accum_steps) for this launch. optim.effective_batch is split
    over the processes; a resumed run keeps the effective batch it started with, whatever the
    number of processes now; without either, the config's own batch_size and accum_steps."""
    o = config.optim
    wanted = saved["effective_batch"] if saved else o.effective_batch
    if wanted is None or (saved and wanted == o.batch_size * o.accum_steps * world.size):
        return o.batch_size, o.accum_steps
    return split_batch(wanted, world.size, o.batch_size)
