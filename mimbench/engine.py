"""The pre-training loop: views -> mask -> frozen target -> student -> masked loss -> AdamW."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from mimbench import checkpoint, config as cfg, distributed, run_lock, teachers
from mimbench.allocator import keep_freed_memory
from mimbench.config import Config
from mimbench.data import build_dataset
from mimbench.data.decode import pipeline
from mimbench.data.views import MIMViews, StreamSampler, student_input, teacher_input
from mimbench.errors import ConfigError, Interrupted, MimbenchError, TrainingDiverged
from mimbench.lr_schedule import lr_at
from mimbench.losses import channel_moments, check_loss, standardize_channels, token_losses
from mimbench.masking import build_masking
from mimbench.optim import adamw
from mimbench.stopping import StopRequest
from mimbench.student import build_student, no_weight_decay_names
from mimbench.trackers import Trackers
from mimbench.target_cache import TargetCache, check_cache_fits, check_fixed_views
from mimbench.target_grid import ResampledFeatures, check_grid
from mimbench.targets import TARGETS
from mimbench.testing import TargetContractError, output_problem

log = logging.getLogger(__name__)
ProgressFn = Callable[[str, int, int, dict], None]  # (task, step, total steps, latest metrics)


def build_target_for(config: Config, progress: ProgressFn | None = None):
    """The target of `config`, given the student's img_size/patch_size/grid where its factory
    takes them and the user did not set them; in-project teachers are built on first use. A
    feature target on another grid is resampled to the student's (mimbench.target_grid)."""
    factory = TARGETS.get(config.target.name).factory
    params = inspect.signature(factory).parameters
    context = {"img_size": config.student.img_size, "patch_size": config.student.patch_size,
               "grid": config.student.grid}
    options = {k: v for k, v in context.items() if k in params}
    options |= teachers.resolve_references(config.target.options, progress)
    provider = factory(**options)
    if isinstance(provider, torch.nn.Module) and any(p.requires_grad for p in provider.parameters()):
        raise TargetContractError(f"target '{config.target.name}' ({TARGETS.get(config.target.name).source}) "
                                  f"has parameters that require grad; a teacher must be frozen "
                                  f"(requires_grad_(False)), as mimbench.check_target_provider says.")
    check_grid(provider.spec, config.student.grid, config.target.name)
    if tuple(provider.spec.grid) != config.student.grid:
        g, s = provider.spec.grid, config.student.grid
        log.info("target '%s' gives a %dx%d grid; resampling it to the student's %dx%d",
                 config.target.name, g[0], g[1], s[0], s[1])
        provider = ResampledFeatures(provider, config.student.grid)
    return provider


def schedule(config: Config, dataset_size: int, effective_batch: int | None = None) -> dict:
    """Total and warmup optimizer steps, effective batch and peak lr the config implies (on one
    process, unless the launch's `effective_batch` is given)."""
    o = config.optim
    batch = effective_batch or o.effective_batch or o.batch_size * o.accum_steps
    steps_per_epoch = max(1, dataset_size // batch)
    if o.steps is not None:
        total = o.steps
    elif o.epochs is not None:
        total = round(o.epochs * steps_per_epoch)
    else:
        raise ConfigError("set optim.steps or optim.epochs.")
    warmup = o.warmup_steps if o.warmup_steps is not None else round((o.warmup_epochs or 0) * steps_per_epoch)
    lr = o.lr * batch / o.lr_base_batch if o.lr_base_batch else o.lr
    return {"total_steps": total, "warmup_steps": min(warmup, total), "effective_batch": batch,
            "peak_lr": lr, "steps_per_epoch": steps_per_epoch}


def build_optimizer(student: torch.nn.Module, config: Config) -> torch.optim.Optimizer:
    skip = no_weight_decay_names(student)
    decay = [p for n, p in student.named_parameters() if n not in skip]
    no_decay = [p for n, p in student.named_parameters() if n in skip]
    groups = [{"params": decay, "weight_decay": config.optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return adamw(groups, lr=config.optim.lr, betas=config.optim.betas)


class RunDir:
    """The files of one run: config.yaml, metrics.jsonl, checkpoint.pt, results.json."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.metrics = self.path / "metrics.jsonl"
        self.checkpoint = self.path / checkpoint.CHECKPOINT
        self.results = self.path / "results.json"
        self.trackers: Trackers | None = None

    # everything a run writes into its directory (run_lock's lock file aside)
    FILES = ("config.yaml", "metrics.jsonl", checkpoint.CHECKPOINT, checkpoint.PREVIOUS,
             "results.json", "features", "evals", "tensorboard", "wandb")

    def saved_config(self) -> Config | None:
        return cfg.from_dict(cfg.load_yaml(self.config)) if self.config.exists() else None

    def clear(self) -> None:
        """Remove what an earlier run wrote here, so that a new one starts afresh."""
        for name in self.FILES:
            path = self.path / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def begin(self, config: Config) -> None:
        """Take the folder for this process (mimbench.run_lock), creating it, write
        config.yaml unless a run started here already, and open run.loggers' trackers."""
        run_lock.hold(self.path)
        if not self.config.exists():
            self.config.write_text(cfg.dump_yaml(config))
        self.trackers = Trackers(self.path, config, "pretrain")

    def log_metrics(self, row: dict) -> None:
        with self.metrics.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.trackers:
            self.trackers.scalars(row["step"], {f"pretrain/{k}": v for k, v in row.items() if k != "step"})

    def close(self) -> None:
        if self.trackers:
            self.trackers.close()
            self.trackers = None

    def truncate_metrics(self, last_step: int) -> None:
        """Drop lines logged after the checkpoint a resumed run restarts from."""
        if not self.metrics.exists():
            return
        kept = [line for line in self.metrics.read_text().splitlines()
                if (row := parsed_row(line)) is not None and row["step"] <= last_step]
        tmp = self.metrics.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(self.metrics)

    def write_results(self, results: dict) -> None:
        tmp = self.results.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(self.results)


def parsed_row(line: str) -> dict | None:
    """A metrics.jsonl line, or None for a blank or torn one (a kill or a full disk mid-write)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) and "step" in row else None


def open_run(out: str | Path, resume: bool, config: Config | None = None,
             overwrite: bool = False) -> RunDir:
    """The run directory at `out`: an existing run to resume, or a place for a new run of
    `config`. A directory holding a run of another config is refused, naming the keys that
    differ, unless `overwrite` (which removes the old run's files); one holding a run of the
    same config that saved no checkpoint starts afresh (its stale lines are dropped)."""
    run = RunDir(out)
    if resume:
        if not run.config.exists():
            raise MimbenchError(f"'{run.path}' is not a run directory (no config.yaml); "
                                f"check the path given to --resume.")
        return run
    saved = run.saved_config()
    if saved is None:  # a new folder, or one holding no run: nothing of mimbench's to remove
        return run
    if overwrite:
        run.clear()
        return run
    changed = cfg.differing_keys(saved, config) if config is not None else []
    if changed:
        raise MimbenchError(f"'{run.path}' holds a run of another config (it differs in "
                            f"{', '.join(changed[:8])}{' ...' if len(changed) > 8 else ''}); "
                            f"choose another --out, or add --overwrite to start afresh there.")
    if run.checkpoint.exists():
        raise MimbenchError(f"'{run.path}' already holds a run; continue it with --resume "
                            f"{run.path}, choose another --out, or add --overwrite.")
    run.clear()  # the same config, nothing saved: a run that died before its first checkpoint
    return run


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


def pretrain(config: Config, run: RunDir, progress: ProgressFn | None = None,
             notify: Callable[[str], None] | None = None) -> dict:
    """Pre-train (or continue) the run in `run`; returns the results written to results.json.
    Under torchrun each process trains one replica (DistributedDataParallel); rank 0 writes,
    holding the run directory (mimbench.run_lock) from its first write to the end."""
    with run_lock.released_after(run.path), StopRequest() as stop:
        try:
            return _pretrain(config, run, progress, notify, stop)
        finally:
            run.close()


def _pretrain(config: Config, run: RunDir, progress: ProgressFn | None,
              notify: Callable[[str], None] | None, stop: StopRequest) -> dict:
    keep_freed_memory()
    world, device = distributed.init(config.run.device)
    provider = build_target_for(config, progress if world.is_main else None)
    spec = provider.spec
    loss_name = config.target.loss or spec.loss
    check_loss(loss_name, spec.kind, config.target.name)
    if isinstance(provider, torch.nn.Module):
        provider.to(device)
    images = build_dataset(config.data.name, **config.data.options)
    if config.target.cache:
        check_fixed_views(config)
        check_cache_fits(spec, len(images))
        provider = TargetCache(provider)
    state = checkpoint.load_latest(run.path) if run.path.exists() else None
    batch, accum = batch_split(config, world, state.get("plan") if state else None)
    plan = schedule(config, len(images), effective_batch=batch * accum * world.size)
    if world.is_main:  # the run directory appears only once the target and data are usable
        run.begin(config)
    total = plan["total_steps"]
    start = state["step"] if state else 0
    if notify and world.is_main:
        notify(f"effective batch {plan['effective_batch']} = {batch} per process x {world.size} "
               f"process(es) x {accum} accumulation step(s); peak lr {plan['peak_lr']:.3g}")

    torch.manual_seed(config.run.seed)
    student = build_student(config.student, spec).to(device)
    optimizer = build_optimizer(student, config)
    if state:
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        if world.is_main:
            run.truncate_metrics(start)
        log.info("resuming %s at step %d of %d", run.path, start, total)
    if start >= total:
        if notify and world.is_main:
            notify(f"{run.path} already finished its {total} steps; nothing to do.")
        distributed.shutdown()
        return json.loads(run.results.read_text()) if run.results.exists() else {}
    model = DistributedDataParallel(student) if world.distributed else student
    if config.run.compile:  # 1.36x (pixels) and 1.29x (clip) the paper step's img/s on an H200
        model = torch.compile(model)

    views = MIMViews(config.student.img_size, spec.input_size, spec.interpolation,
                     build_masking(config.mask, config.student), config.data.crop_scale,
                     config.data.hflip, config.data.color_jitter)
    sampler = StreamSampler(len(images), config.run.seed, start=start * plan["effective_batch"],
                            rank=world.rank, world_size=world.size, chunk=batch)
    dataset, collate, prepare = pipeline(config.data.decode, images, views, config.run.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, sampler=sampler, collate_fn=collate,
        num_workers=config.data.num_workers, pin_memory=device.type == "cuda",
        persistent_workers=config.data.num_workers > 0)
    batches = iter(loader)

    student.train()
    started, window_start, window_images, window_wait = time.perf_counter(), time.perf_counter(), 0, 0.0
    earlier = state.get("elapsed_s", 0.0) if state else 0.0  # wall time of the runs resumed from

    def save(done: int):
        if not all(torch.isfinite(p).all() for p in student.parameters()):  # never checkpointed
            raise TrainingDiverged(f"the weights became non-finite by step {done}; the last good "
                                   f"checkpoint in '{run.path}' is kept: lower optim.lr or set "
                                   f"optim.amp=none, then --resume.")
        checkpoint.save_atomic({"step": done, "student": student.state_dict(),
                                "optimizer": optimizer.state_dict(), "plan": plan,
                                "config": cfg.to_dict(config),
                                "elapsed_s": earlier + time.perf_counter() - started},
                               run.checkpoint, keep_previous=True)

    metrics = {}
    for step in range(start, total):
        if distributed.any_rank(stop.asked):  # between steps, on every rank at the same step
            if world.is_main and step > start:
                save(step)
            distributed.shutdown()
            if not run.checkpoint.exists():
                raise Interrupted(f"stopped before the first step of {total}; nothing was saved.")
            raise Interrupted(f"stopped at step {step} of {total}; continue with mimbench "
                              f"pretrain --resume {run.path}")
        # a forward's randomness (drop path) is a function of (seed, its chunk of the sample
        # stream): resume is exact, and 1 or N processes draw alike at one effective batch
        chunks = [(step * accum + i) * world.size + world.rank for i in range(accum)]
        seeds = [config.run.seed * 1_000_003 + c for c in chunks]
        lr = lr_at(step, total, plan["warmup_steps"], plan["peak_lr"], config.optim.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        waited = time.perf_counter()
        micro = [prepare(next(batches), device) for _ in range(accum)]
        window_wait += time.perf_counter() - waited
        try:
            step_loss = train_step(model, provider, spec, micro, loss_name, config, device, seeds)
        except torch.OutOfMemoryError:
            raise MimbenchError(
                f"out of memory at step {step}; the last good checkpoint in '{run.path}' is kept: "
                f"lower optim.batch_size and raise optim.accum_steps by the same factor (same "
                f"effective batch), or set optim.amp=bf16, then start again.") from None
        if not math.isfinite(step_loss):
            raise TrainingDiverged(
                f"the loss became {step_loss} at step {step} ({kept_note(run)}): lower optim.lr, raise "
                f"optim.warmup_steps, or set optim.amp=none, then "
                f"{'--resume' if run.checkpoint.exists() else 'start again'}.")
        grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(),
                                                   config.optim.clip_grad or math.inf)
        if not torch.isfinite(grad_norm):
            optimizer.zero_grad(set_to_none=True)
            if config.optim.nonfinite_grads == "stop":
                raise TrainingDiverged(
                    f"the gradient norm became {grad_norm.item()} at step {step} with a finite loss "
                    f"({kept_note(run)}): lower optim.lr, set optim.amp=none, or set "
                    f"optim.nonfinite_grads=skip to skip such steps.")
            log.warning("step %d: non-finite gradient norm; the step is skipped", step)
            continue
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        done = step + 1
        window_images += plan["effective_batch"]
        metrics = {"step": done, "loss": step_loss, "lr": lr}
        if done % config.run.log_every == 0 or done == total:
            elapsed = time.perf_counter() - window_start
            metrics["img_per_s"] = window_images / max(elapsed, 1e-9)
            metrics["data_wait"] = window_wait / max(elapsed, 1e-9)  # fraction spent waiting for batches
            if world.is_main:
                run.log_metrics(metrics)
            window_start, window_images, window_wait = time.perf_counter(), 0, 0.0
        if (done % config.run.checkpoint_every == 0 or done == total) and world.is_main:
            save(done)
        if progress and world.is_main:
            progress("pre-training", done, total, metrics)

    results = {"pretrain": {"steps": total, "final_loss": metrics["loss"], "loss": loss_name,
                            "wall_time_s": earlier + time.perf_counter() - started,  # all resumes
                            "world_size": world.size, **plan},
               "target": {"name": config.target.name, **asdict(spec),
                          "teachers": teachers.used_by(config.target.options)},
               "config": cfg.to_dict(config), "identity": cfg.identity(config)}
    if world.is_main:
        run.write_results(results)
    distributed.barrier()
    distributed.shutdown()
    return results


def kept_note(run: RunDir) -> str:
    """What a stopped run leaves behind, for its error message."""
    if run.checkpoint.exists():
        return f"the last good checkpoint in '{run.path}' is kept"
    return "no checkpoint was written yet"


def checked_targets(provider, view, index, spec, name: str):
    """The provider's targets for a batch, held to the contract on every batch (shape, dtype,
    finite values, token range: a cheap check beside a step); a failure or an exception of the
    provider is reported naming the target and where it comes from, never as divergence."""
    try:
        out = provider(view) if index is None else provider(view, index)
    except MimbenchError:
        raise
    except Exception as e:
        raise TargetContractError(f"target '{name}' ({TARGETS.get(name).source}) failed on a batch "
                                  f"of views: {type(e).__name__}: {e}") from e
    problem = output_problem(out, spec, len(view))
    if problem:
        raise TargetContractError(f"target '{name}' ({TARGETS.get(name).source}) broke the target "
                                  f"contract on a batch of views: {problem}.")
    return out


def train_step(model, provider, spec, micro: list[dict], loss_name: str, config: Config,
               device: torch.device, seeds: list[int] | None = None) -> float:
    """Forward and backward over this process's micro-batches; returns the step's loss over
    all processes. Targets are standardised with moments of the whole effective batch, and
    the loss is a sum over masked tokens divided by their count in the whole effective batch,
    so the gradient equals one process's over one batch of that size. `seeds`: one per
    micro-batch, set before its forward."""
    targets = []
    cached = isinstance(provider, TargetCache)
    with torch.inference_mode(), distributed.autocast(device, config.run.teacher_amp):
        for b in micro:
            view = teacher_input(b["teacher"].to(device, non_blocking=True))  # [B, 3, T, T]
            targets.append(checked_targets(provider, view, b["index"] if cached else None, spec,
                                           config.target.name))  # [B, N(, D)]
    targets = [t.clone() for t in targets]  # ordinary tensors, usable in autograd
    if spec.kind == "features":
        targets = [t.float() for t in targets]
        if config.target.standardize:
            moments = distributed.sum_all(channel_moments(targets))
            targets = [standardize_channels(t, moments) for t in targets]
    masks = [b["mask"].to(device, non_blocking=True) for b in micro]  # each [B, N]
    masked = distributed.sum_all(sum(m.sum() for m in masks).double())
    if masked.item() == 0:
        raise ConfigError("no patch of this step's batch was masked; raise mask.ratio or "
                          "mask.num_masked, or lower mask.min_block.")
    world_size = distributed.world_size()
    scale = world_size / masked.item()  # DDP averages gradients over processes
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for i, (b, target, mask) in enumerate(zip(micro, targets, masks)):
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
