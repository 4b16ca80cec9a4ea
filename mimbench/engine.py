"""The pre-training loop: views -> mask -> frozen target -> student -> masked loss -> AdamW."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from mimbench import checkpoint, config as cfg, teachers
from mimbench.config import Config
from mimbench.data import build_dataset
from mimbench.data.views import MIMDataset, MIMViews, StreamSampler
from mimbench.errors import ConfigError, MimbenchError, TrainingDiverged
from mimbench.losses import check_loss, masked_loss, standardize_channels
from mimbench.masking import build_masking
from mimbench.student import Student, no_weight_decay_names
from mimbench.targets import TARGETS

log = logging.getLogger(__name__)
ProgressFn = Callable[[str, int, int, dict], None]  # (task, step, total steps, latest metrics)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_target_for(config: Config, progress: ProgressFn | None = None):
    """The target of `config`, given the student's img_size/patch_size/grid where its factory
    takes them and the user did not set them; in-project teachers are built on first use."""
    factory = TARGETS.get(config.target.name).factory
    params = inspect.signature(factory).parameters
    context = {"img_size": config.student.img_size, "patch_size": config.student.patch_size,
               "grid": config.student.grid}
    options = {k: v for k, v in context.items() if k in params}
    options |= teachers.resolve_references(config.target.options, progress)
    provider = factory(**options)
    spec = provider.spec
    if tuple(spec.grid) != config.student.grid:
        g, s = spec.grid, config.student.grid
        raise ConfigError(f"target '{config.target.name}' gives a {g[0]}x{g[1]} token grid but the "
                          f"student has {s[0]}x{s[1]} patches; change the target's input size or "
                          f"student.img_size/patch_size so they agree.")
    return provider


def autocast(device: torch.device, mode: str):
    if mode == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_at(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    """Linear warmup for `warmup` steps, then cosine from `peak` to `floor` at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def schedule(config: Config, dataset_size: int) -> dict:
    """Total and warmup optimizer steps, effective batch and peak lr the config implies."""
    o = config.optim
    batch = o.batch_size * o.accum_steps  # one process; distributed runs multiply by world size
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
    return torch.optim.AdamW(groups, lr=config.optim.lr, betas=config.optim.betas)


class RunDir:
    """The files of one run: config.yaml, metrics.jsonl, checkpoint.pt, results.json."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.metrics = self.path / "metrics.jsonl"
        self.checkpoint = self.path / checkpoint.CHECKPOINT
        self.results = self.path / "results.json"

    def log_metrics(self, row: dict) -> None:
        with self.metrics.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_metrics(self, last_step: int) -> None:
        """Drop lines logged after the checkpoint a resumed run restarts from."""
        if not self.metrics.exists():
            return
        kept = [line for line in self.metrics.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= last_step]
        tmp = self.metrics.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(self.metrics)

    def write_results(self, results: dict) -> None:
        tmp = self.results.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(self.results)


def open_run(out: str | Path, resume: bool) -> RunDir:
    """The run directory at `out`: an existing run to resume, or a place for a new one."""
    run = RunDir(out)
    if resume and not run.config.exists():
        raise MimbenchError(f"'{run.path}' is not a run directory (no config.yaml); "
                            f"check the path given to --resume.")
    if not resume and run.checkpoint.exists():
        raise MimbenchError(f"'{run.path}' already holds a run; continue it with --resume "
                            f"{run.path} or choose another --out.")
    return run


def pretrain(config: Config, run: RunDir, progress: ProgressFn | None = None) -> dict:
    """Pre-train (or continue) the run in `run`; returns the results written to results.json."""
    device = resolve_device(config.run.device)
    provider = build_target_for(config, progress)
    spec = provider.spec
    loss_name = config.target.loss or spec.loss
    check_loss(loss_name, spec.kind, config.target.name)
    if isinstance(provider, torch.nn.Module):
        provider.to(device)

    images = build_dataset(config.data.name, **config.data.options)
    plan = schedule(config, len(images))
    run.path.mkdir(parents=True, exist_ok=True)  # only now that the target and data are usable
    if not run.config.exists():
        run.config.write_text(cfg.dump_yaml(config))
    total, batch = plan["total_steps"], config.optim.batch_size

    state = checkpoint.load(run.checkpoint) if run.checkpoint.exists() else None
    start = state["step"] if state else 0
    torch.manual_seed(config.run.seed)
    student = Student(config.student, spec).to(device)
    optimizer = build_optimizer(student, config)
    if state:
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        run.truncate_metrics(start)
        log.info("resuming %s at step %d of %d", run.path, start, total)
    if start >= total:
        log.warning("%s already finished its %d steps; nothing to do", run.path, total)
        return json.loads(run.results.read_text()) if run.results.exists() else {}

    views = MIMViews(config.student.img_size, spec.input_size, spec.interpolation,
                     build_masking(config.mask, config.student.grid), config.data.crop_scale,
                     config.data.hflip, config.data.color_jitter)
    sampler = StreamSampler(len(images), config.run.seed, start=start * plan["effective_batch"])
    loader = torch.utils.data.DataLoader(
        MIMDataset(images, views, config.run.seed), batch_size=batch, sampler=sampler,
        num_workers=config.data.num_workers, pin_memory=device.type == "cuda",
        persistent_workers=config.data.num_workers > 0)
    batches = iter(loader)

    student.train()
    started, window_start, window_images = time.perf_counter(), time.perf_counter(), 0
    metrics = {}
    for step in range(start, total):
        lr = lr_at(step, total, plan["warmup_steps"], plan["peak_lr"], config.optim.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = 0.0
        for _ in range(config.optim.accum_steps):
            b = next(batches)
            student_view = b["student"].to(device, non_blocking=True)  # [B, 3, S, S]
            teacher_view = b["teacher"].to(device, non_blocking=True)  # [B, 3, T, T]
            mask = b["mask"].to(device, non_blocking=True)  # [B, N]
            with torch.inference_mode(), autocast(device, config.run.teacher_amp):
                target = provider(teacher_view)  # [B, N, D] or [B, N]
            target = target.clone()  # an ordinary tensor, usable in autograd
            if spec.kind == "features":
                target = target.float()
                if config.target.standardize:
                    target = standardize_channels(target)
            with autocast(device, config.optim.amp):
                pred = student(student_view, mask)  # [B, N, dim]
            loss = masked_loss(pred, target, mask, loss_name)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"the loss became {loss.item()} at step {step}; the last good checkpoint in "
                    f"'{run.path}' is kept: lower optim.lr, raise optim.warmup_steps, or set "
                    f"optim.amp=none, then --resume.")
            (loss / config.optim.accum_steps).backward()
            step_loss += loss.item() / config.optim.accum_steps
        if config.optim.clip_grad:
            torch.nn.utils.clip_grad_norm_(student.parameters(), config.optim.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        done = step + 1
        window_images += plan["effective_batch"]
        metrics = {"step": done, "loss": step_loss, "lr": lr}
        if done % config.run.log_every == 0 or done == total:
            elapsed = time.perf_counter() - window_start
            metrics["img_per_s"] = window_images / max(elapsed, 1e-9)
            run.log_metrics(metrics)
            window_start, window_images = time.perf_counter(), 0
        if done % config.run.checkpoint_every == 0 or done == total:
            checkpoint.save_atomic({"step": done, "student": student.state_dict(),
                                    "optimizer": optimizer.state_dict(),
                                    "rng": torch.get_rng_state(), "config": cfg.to_dict(config)},
                                   run.checkpoint)
        if progress:
            progress("pre-training", done, total, metrics)

    results = {"pretrain": {"steps": total, "final_loss": metrics["loss"], "loss": loss_name,
                            "wall_time_s": time.perf_counter() - started, **plan},
               "target": {"name": config.target.name, **asdict(spec)},
               "config": cfg.to_dict(config)}
    run.write_results(results)
    return results
