"""The suite's ceiling row: the student's architecture trained with labels instead of a MIM
target, on the pre-training images and budget (steps x effective batch), saved as a
checkpoint that every evaluation reads as it reads a pre-trained student."""

from __future__ import annotations

import dataclasses
import time

import torch

from mimbench import checkpoint, config as cfg, run_lock
from mimbench.data import build_dataset
from mimbench.distributed import resolve_device
from mimbench.optim import schedule
from mimbench.run_dir import RunDir
from mimbench.evals.finetune import train_classifier
from mimbench.student import build_encoder, student_weights


def train_supervised(config: cfg.Config, run: RunDir, progress=None) -> dict:
    """Train from random init with the fine-tuning recipe, minus layer decay (nothing is
    pre-trained to protect); writes run/checkpoint.pt and results.json's 'pretrain'."""
    with run_lock.released_after(run.path):
        return _train_supervised(config, run, progress)


def _train_supervised(config: cfg.Config, run: RunDir, progress) -> dict:
    started = time.perf_counter()
    images = build_dataset(config.data.name, **config.data.options)  # (image, label) pairs
    plan = schedule(config, len(images))
    recipe = dataclasses.replace(config.finetune, batch_size=plan["effective_batch"], layer_decay=1.0)
    torch.manual_seed(config.run.seed)
    encoder = build_encoder(config.student)
    final_norm = encoder.norm  # fine-tuning trains without it (fc_norm after pooling) ...
    _, losses = train_classifier(encoder, images, recipe, config.student.img_size,
                                 plan["total_steps"], plan["warmup_steps"], config.run.seed,
                                 progress, task="supervised", device=resolve_device(config.run.device),
                                 amp=config.optim.amp)
    encoder.norm = final_norm  # ... and a student's checkpoint has one: at init, a plain standardisation
    run.begin(config)
    checkpoint.save_atomic({"step": plan["total_steps"], "config": cfg.to_dict(config),
                            "student": student_weights(encoder)}, run.checkpoint)
    results = {"pretrain": {"kind": "supervised", "steps": plan["total_steps"],
                            "batch": plan["effective_batch"], "final_loss": losses[-1],
                            "recipe": dataclasses.asdict(recipe),
                            "wall_time_s": time.perf_counter() - started},
               "target": {"name": "supervised"}, "config": cfg.to_dict(config)}
    run.write_results(results)
    return results
