"""The pre-training loop: views -> mask -> frozen target -> student -> masked loss -> AdamW.

`pretrain` sets a run up (`prepare`: target, data, batch split, schedule, student, optimizer,
the checkpoint to resume from), runs `train_loop` and writes results.json. A step's gradient
is `train_step`'s; the run directory's files are mimbench.run_dir's."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from mimbench import checkpoint, config as cfg, distributed, run_lock, teachers
from mimbench.config import Config
from mimbench.data import build_dataset
from mimbench.data.decode import pipeline
from mimbench.data.views import MIMViews, StreamSampler, student_input, teacher_input
from mimbench.errors import ConfigError, Interrupted, MimbenchError, TrainingDiverged
from mimbench.losses import channel_moments, check_loss, standardize_channels, token_losses
from mimbench.lr_schedule import lr_at
from mimbench.masking import build_masking
from mimbench.optim import batch_split, pretraining_optimizer, schedule
from mimbench.run_dir import RunDir, kept_note
from mimbench.stopping import StopRequest
from mimbench.student import build_student
from mimbench.targets.source import Targets, build_target_for, check_cache_fits, check_fixed_views

log = logging.getLogger(__name__)
ProgressFn = Callable[[str, int, int, dict], None]  # (task, step, total steps, latest metrics)


@dataclass
class Pretraining:
    """One process's pre-training, set up: what the loop reads and updates."""

    config: Config
    run: RunDir
    world: distributed.World
    device: torch.device
    targets: Targets
    loss: str  # the target's loss name
    images: object  # the dataset
    plan: dict  # mimbench.optim.schedule's steps, warmup, effective batch and peak lr
    batch: int  # images per forward on this process
    accum: int  # forwards per optimizer step
    start: int  # the first step to take (> 0 when resuming)
    student: torch.nn.Module
    optimizer: torch.optim.Optimizer
    earlier_s: float  # wall time of the runs resumed from

    @property
    def total(self) -> int:
        return self.plan["total_steps"]


def pretrain(config: Config, run: RunDir, progress: ProgressFn | None = None,
             notify: Callable[[str], None] | None = None) -> dict:
    """Pre-train (or continue) the run in `run`; returns the results written to results.json.
    Under torchrun each process trains one replica (DistributedDataParallel); rank 0 writes,
    holding the run directory (mimbench.run_lock) from its first write to the end."""
    with run_lock.released_after(run.path), StopRequest() as stop:
        try:
            world, device = distributed.init(config.run.device)
            p = prepare(config, run, world, device, progress if world.is_main else None,
                        notify if world.is_main else None)
            if p.start >= p.total:
                if notify and world.is_main:
                    notify(f"{run.path} already finished its {p.total} steps; nothing to do.")
                distributed.shutdown()
                return json.loads(run.results.read_text()) if run.results.exists() else {}
            started = time.perf_counter()
            metrics = train_loop(p, stop, progress if world.is_main else None)
            return finish(p, metrics, p.earlier_s + time.perf_counter() - started)
        finally:
            run.close()


def prepare(config: Config, run: RunDir, world: distributed.World, device: torch.device,
            progress: ProgressFn | None, notify: Callable[[str], None] | None) -> Pretraining:
    """Target, data, batch split and schedule, student and optimizer, resumed from the run's
    latest checkpoint when it has one; the run directory appears only once these are usable."""
    provider = build_target_for(config, progress, device)
    loss = config.target.loss or provider.spec.loss
    check_loss(loss, provider.spec.kind, config.target.name)
    images = build_dataset(config.data.name, **config.data.options)
    if config.target.cache:
        check_fixed_views(config)
        check_cache_fits(provider.spec, len(images))
    state = checkpoint.load_latest(run.path) if run.path.exists() else None
    batch, accum = batch_split(config, world, state.get("plan") if state else None)
    plan = schedule(config, len(images), effective_batch=batch * accum * world.size)
    if world.is_main:
        run.begin(config)
    if notify:
        notify(f"effective batch {plan['effective_batch']} = {batch} per process x {world.size} "
               f"process(es) x {accum} accumulation step(s); peak lr {plan['peak_lr']:.3g}")
    torch.manual_seed(config.run.seed)
    student = build_student(config.student, provider.spec).to(device)
    optimizer = pretraining_optimizer(student, config)
    start = state["step"] if state else 0
    if world.is_main:  # lines logged after the checkpoint, or by an attempt that saved none
        run.truncate_metrics(start)
    if state:
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        log.info("resuming %s at step %d of %d", run.path, start, plan["total_steps"])
    return Pretraining(config, run, world, device, Targets(provider, config.target.name, config.target.cache),
                       loss, images, plan, batch, accum, start, student, optimizer,
                       state.get("elapsed_s", 0.0) if state else 0.0)


def batches(p: Pretraining):
    """This process's batches from step p.start on: each a dict of uint8 student and teacher
    views, the mask and the images' indices (mimbench.data.decode)."""
    c = p.config
    views = MIMViews(c.student.img_size, p.targets.spec.input_size, p.targets.spec.interpolation,
                     build_masking(c.mask, c.student), c.data.crop_scale, c.data.hflip, c.data.color_jitter)
    sampler = StreamSampler(len(p.images), c.run.seed, start=p.start * p.plan["effective_batch"],
                            rank=p.world.rank, world_size=p.world.size, chunk=p.batch)
    dataset, collate, prepare_batch = pipeline(c.data.decode, p.images, views, c.run.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=p.batch, sampler=sampler, collate_fn=collate,
        num_workers=c.data.num_workers, pin_memory=p.device.type == "cuda",
        persistent_workers=c.data.num_workers > 0)
    return (prepare_batch(b, p.device) for b in loader)


def train_loop(p: Pretraining, stop: StopRequest, progress: ProgressFn | None) -> dict:
    """Steps p.start .. p.total; returns the last step's metrics. Checkpoints every
    run.checkpoint_every steps and at the end; stops, checkpointed, when asked."""
    model = DistributedDataParallel(p.student) if p.world.distributed else p.student
    if p.config.run.compile:  # 1.36x (pixels) and 1.29x (clip) the paper step's img/s on an H200
        model = torch.compile(model)
    stream = batches(p)
    p.student.train()
    started = window_start = time.perf_counter()
    window_images, window_wait, metrics = 0, 0.0, {}
    for step in range(p.start, p.total):
        if distributed.any_rank(stop.asked):  # between steps, on every rank at the same step
            stop_at(p, step, p.earlier_s + time.perf_counter() - started)
        # a forward's randomness (drop path) is a function of (seed, its chunk of the sample
        # stream): resume is exact, and 1 or N processes draw alike at one effective batch
        chunks = [(step * p.accum + i) * p.world.size + p.world.rank for i in range(p.accum)]
        seeds = [p.config.run.seed * 1_000_003 + c for c in chunks]
        lr = lr_at(step, p.total, p.plan["warmup_steps"], p.plan["peak_lr"], p.config.optim.min_lr)
        for group in p.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        waited = time.perf_counter()
        micro = [next(stream) for _ in range(p.accum)]
        window_wait += time.perf_counter() - waited
        try:
            loss = train_step(model, p.targets, micro, p.loss, p.config, p.device, seeds)
        except torch.OutOfMemoryError:
            raise MimbenchError(
                f"out of memory at step {step}; the last good checkpoint in '{p.run.path}' is kept: "
                f"lower optim.batch_size and raise optim.accum_steps by the same factor (same "
                f"effective batch), or set optim.amp=bf16, then start again.") from None
        if not apply_gradients(p, step, loss):
            continue
        done = step + 1
        window_images += p.plan["effective_batch"]
        metrics = {"step": done, "loss": loss, "lr": lr}
        if done % p.config.run.log_every == 0 or done == p.total:
            elapsed = time.perf_counter() - window_start
            metrics["img_per_s"] = window_images / max(elapsed, 1e-9)
            metrics["data_wait"] = window_wait / max(elapsed, 1e-9)  # fraction spent waiting for batches
            if p.world.is_main:
                p.run.log_metrics(metrics)
            window_start, window_images, window_wait = time.perf_counter(), 0, 0.0
        if (done % p.config.run.checkpoint_every == 0 or done == p.total) and p.world.is_main:
            save(p, done, p.earlier_s + time.perf_counter() - started)
        if progress:
            progress("pre-training", done, p.total, metrics)
    return metrics


def apply_gradients(p: Pretraining, step: int, loss: float) -> bool:
    """Clip and apply the step's gradients; False for a step skipped (optim.nonfinite_grads=
    skip). A non-finite loss, or gradient norm under "stop", ends the run in one sentence."""
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"the loss became {loss} at step {step} ({kept_note(p.run)}): lower optim.lr, raise "
            f"optim.warmup_steps, or set optim.amp=none, then "
            f"{'--resume' if p.run.checkpoint.exists() else 'start again'}.")
    grad_norm = torch.nn.utils.clip_grad_norm_(p.student.parameters(), p.config.optim.clip_grad or math.inf)
    if not torch.isfinite(grad_norm):
        p.optimizer.zero_grad(set_to_none=True)
        if p.config.optim.nonfinite_grads == "stop":
            raise TrainingDiverged(
                f"the gradient norm became {grad_norm.item()} at step {step} with a finite loss "
                f"({kept_note(p.run)}): lower optim.lr, set optim.amp=none, or set "
                f"optim.nonfinite_grads=skip to skip such steps.")
        log.warning("step %d: non-finite gradient norm; the step is skipped", step)
        return False
    p.optimizer.step()
    p.optimizer.zero_grad(set_to_none=True)
    return True


def save(p: Pretraining, done: int, elapsed_s: float) -> None:
    """Checkpoint after `done` steps (rank 0); non-finite weights are never checkpointed."""
    if not all(torch.isfinite(w).all() for w in p.student.parameters()):
        raise TrainingDiverged(f"the weights became non-finite by step {done}; the last good "
                               f"checkpoint in '{p.run.path}' is kept: lower optim.lr or set "
                               f"optim.amp=none, then --resume.")
    checkpoint.save_atomic({"step": done, "student": p.student.state_dict(),
                            "optimizer": p.optimizer.state_dict(), "plan": p.plan,
                            "config": cfg.to_dict(p.config), "elapsed_s": elapsed_s},
                           p.run.checkpoint, keep_previous=True)


def stop_at(p: Pretraining, step: int, elapsed_s: float):
    """Stop between steps, every rank at `step`: rank 0 checkpoints (unless nothing was done
    since the last one) and the message says how to continue."""
    if p.world.is_main and step > p.start:
        save(p, step, elapsed_s)
    distributed.shutdown()
    if not p.run.checkpoint.exists():
        raise Interrupted(f"stopped before the first step of {p.total}; nothing was saved.")
    raise Interrupted(f"stopped at step {step} of {p.total}; continue with mimbench "
                      f"pretrain --resume {p.run.path}")


def finish(p: Pretraining, metrics: dict, wall_time_s: float) -> dict:
    """results.json (rank 0), once every rank has finished."""
    spec = p.targets.spec
    results = {"pretrain": {"steps": p.total, "final_loss": metrics["loss"], "loss": p.loss,
                            "wall_time_s": wall_time_s,  # all resumes
                            "world_size": p.world.size, **p.plan},
               "target": {"name": p.config.target.name, **asdict(spec),
                          "teachers": teachers.used_by(p.config.target.options)},
               "config": cfg.to_dict(p.config), "identity": cfg.identity(p.config)}
    if p.world.is_main:
        p.run.write_results(results)
    distributed.barrier()
    distributed.shutdown()
    return results


def train_step(model, targets: Targets, micro: list[dict], loss_name: str, config: Config,
               device: torch.device, seeds: list[int] | None = None) -> float:
    """Forward and backward over this process's micro-batches; returns the step's loss over
    all processes. Targets are standardised with moments of the whole effective batch, and
    the loss is a sum over masked tokens divided by their count in the whole effective batch,
    so the gradient equals one process's over one batch of that size. `seeds`: one per
    micro-batch, set before its forward."""
    with torch.inference_mode(), distributed.autocast(device, config.run.teacher_amp):
        goals = [targets(teacher_input(b["teacher"].to(device, non_blocking=True)), b["index"])
                 for b in micro]  # views [B, 3, T, T] -> [B, N(, D)]
    goals = [t.clone() for t in goals]  # ordinary tensors, usable in autograd
    if targets.spec.kind == "features":
        goals = [t.float() for t in goals]
        if config.target.standardize:
            moments = distributed.sum_all(channel_moments(goals))
            goals = [standardize_channels(t, moments) for t in goals]
    masks = [b["mask"].to(device, non_blocking=True) for b in micro]  # each [B, N]
    masked = distributed.sum_all(sum(m.sum() for m in masks).double())
    if masked.item() == 0:
        raise ConfigError("no patch of this step's batch was masked; raise mask.ratio or "
                          "mask.num_masked, or lower mask.min_block.")
    world_size = distributed.world_size()
    scale = world_size / masked.item()  # DDP averages gradients over processes
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for i, (b, target, mask) in enumerate(zip(micro, goals, masks)):
        last = i == len(micro) - 1
        sync = contextlib.nullcontext() if last or world_size == 1 else model.no_sync()
        if seeds:
            torch.manual_seed(seeds[i])
        with sync:
            with distributed.autocast(device, config.optim.amp):
                view = student_input(b["student"].to(device, non_blocking=True))  # [B, 3, S, S]
                pred = model(view, mask)  # [B, N, dim]
            token_loss = token_losses(pred, target, mask, loss_name).sum()
            (token_loss * scale).backward()
        loss_sum += token_loss.detach().double()
    return (distributed.sum_all(loss_sum) / masked).item()
