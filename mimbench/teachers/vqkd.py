"""A tiny VQ-KD tokenizer (BEiT v2) distilled on world images from the tiny CLIP teacher's
features: the stage the `clip` target regresses, quantised into codes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from mimbench.fitting import Resumable, fit
from mimbench.lr_schedule import lr_at
from mimbench.targets import build_target
from mimbench.targets.vqkd import VQKD, reconstruction_loss
from mimbench.teachers.base import FIT_STATE, Teacher, WorldTeacherConfig, code_usage, world_images

WEIGHTS = "vqkd.pth"  # a released-format checkpoint: {"model": state dict}, tensors only
SHAPE = "shape.json"


@dataclass(frozen=True)
class VQKDTeacherConfig(WorldTeacherConfig):
    teacher: str = "clip"  # the in-project teacher whose features the codes reconstruct
    layer: int = 2  # its stage: the one the tiny clip target regresses
    images: int = 20_000  # scenes from the world's `teacher` split
    patch_size: int = 8  # 8x8 codes at 64 px: the tiny student's grid
    width: int = 64
    depth: int = 2
    heads: int = 2
    decoder_depth: int = 1
    codebook_size: int = 512
    code_dim: int = 32  # BEiT v2's
    decay: float = 0.99  # BEiT v2's codebook EMA
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 50
    eval_images: int = 1_000


def shape_of(config: VQKDTeacherConfig, out_dim: int) -> dict:
    return dict(img_size=config.image_size, patch_size=config.patch_size, width=config.width,
                depth=config.depth, heads=config.heads, codebook_size=config.codebook_size,
                code_dim=config.code_dim, decoder_depth=config.decoder_depth, out_dim=out_dim)


def build(config: VQKDTeacherConfig, folder: Path, progress=None, parents=None) -> dict:
    """parents: {config.teacher: the target options that load it} (mimbench.teachers.ensure
    builds it first)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    target = build_target("clip", **parents[config.teacher], layer=config.layer)
    images = world_images("teacher", config.images, config)
    model = VQKD(**shape_of(config, target.spec.dim), decay=config.decay)
    if model.grid != tuple(target.spec.grid):
        raise ValueError(f"the tokenizer's {model.grid} grid must be the teacher's {target.spec.grid}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.99), weight_decay=1e-4)  # BEiT v2's

    def loss_of(step: int) -> float:
        x = images[rng.choice(len(images), config.batch_size, replace=False)].float() / 255
        goal = target(x)  # [B, N, D] the teacher's features
        quantised, _, commitment = model.encode(x)
        loss = reconstruction_loss(model.decode(quantised), goal) + commitment
        loss.backward()
        return loss.item()

    model.train()
    fit(optimizer, loss_of, config.steps, partial(lr_at, total=config.steps, warmup=config.warmup_steps, peak=config.lr),
        progress, "teacher vqkd", Resumable(folder / FIT_STATE, {"model": model}, rng))
    model.eval()
    report = evaluate(model, target, images, config)
    torch.save({"model": model.state_dict()}, folder / WEIGHTS)
    (folder / SHAPE).write_text(json.dumps(model.shape))
    return report


@torch.no_grad()
def evaluate(model: VQKD, target, train_images: torch.Tensor, config: VQKDTeacherConfig) -> dict:
    """On held-out `val` scenes: how well the codes reconstruct the teacher's features (mean
    cosine similarity per position) against the best constant guess (the teacher's mean
    feature over training images), and how the codebook is used."""
    x = world_images("val", config.eval_images, config).float() / 255
    goal = target(x)  # [P, N, D]
    quantised, ids, _ = model.encode(x)
    cosine = torch.nn.functional.cosine_similarity(model.decode(quantised), goal, dim=-1).mean().item()
    mean_feature = target(train_images[:config.eval_images].float() / 255).mean((0, 1))  # [D]
    baseline = torch.nn.functional.cosine_similarity(goal, mean_feature.expand_as(goal), dim=-1).mean().item()
    return {"recon_cosine": cosine, "mean_feature_cosine": baseline,
            **code_usage(ids, config.codebook_size), "codebook_size": config.codebook_size,
            "eval_images": len(x)}


def reference(folder: Path) -> dict:
    return {"weights": str(folder / WEIGHTS), "shape": json.loads((folder / SHAPE).read_text())}


TEACHERS = [
    Teacher("vqkd", build, WEIGHTS, reference, VQKDTeacherConfig(), 2.6),
    Teacher("vqkd-smoke", build, WEIGHTS, reference,
                     VQKDTeacherConfig(teacher="clip-smoke", image_size=32, images=128, width=32,
                                       codebook_size=64, steps=3, batch_size=8, warmup_steps=1,
                                       eval_images=32), 0.1),
]
