"""A tiny CLIP (open_clip's own CLIP class, ResNet image tower) trained on world captions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mimbench.data.world import SHAPES, describe
from mimbench.fitting import Resumable, fit
from mimbench.lr_schedule import lr_at
from mimbench.teachers.base import FIT_STATE, Teacher, WorldTeacherConfig, world_scenes


@dataclass(frozen=True)
class ClipTeacherConfig(WorldTeacherConfig):
    pairs: int = 20_000  # captioned scenes from the world's `teacher` split
    steps: int = 800
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    caption_drop: float = 0.5  # each non-shape attribute left out with this probability
    name_probability: float = 1.0  # each shape named in a caption with this probability (docs/teachers.md)
    embed_dim: int = 64
    width: int = 16
    layers: tuple[int, int, int, int] = (1, 1, 1, 1)
    head_width: int = 32
    context_length: int = 16
    text_width: int = 64
    text_heads: int = 4
    text_layers: int = 2
    eval_pairs: int = 1_000  # held-out scenes from the `val` split

    def model_cfg(self) -> dict:
        return {"embed_dim": self.embed_dim,
                "vision_cfg": {"layers": list(self.layers), "width": self.width,
                               "head_width": self.head_width, "image_size": self.image_size},
                "text_cfg": {"context_length": self.context_length, "width": self.text_width,
                             "heads": self.text_heads, "layers": self.text_layers}}


def _normalise(images: torch.Tensor) -> torch.Tensor:
    import open_clip

    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def build(config: ClipTeacherConfig, folder: Path, progress=None, parents=None,
          supervised: bool = False) -> dict:
    """Train the tiny CLIP contrastively on captioned world scenes. With `labels`, the
    supervised teacher instead: the same image tower and a linear classifier on its embedding,
    trained by cross-entropy on the scenes' shape labels (the evaluation's classes), on the
    same scenes, steps, batch and schedule; its text tower keeps its initial weights."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    images, scenes = world_scenes("teacher", config.pairs, config)
    model = open_clip.CLIP(**config.model_cfg())
    modules = {"model": model}
    if supervised:
        modules["classifier"] = torch.nn.Linear(config.embed_dim, len(SHAPES))
        shapes = torch.tensor([s.label for s in scenes])
    params = [p for module in modules.values() for p in module.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    def loss_of(step: int) -> float:
        index = rng.choice(len(scenes), config.batch_size, replace=False)
        if supervised:
            logits = modules["classifier"](model.encode_image(_normalise(images[index])))  # [B, C]
            loss = F.cross_entropy(logits, shapes[index])
            loss.backward()
            return loss.item()
        captions = [describe(scenes[i].objects, config.caption_drop, rng, config.name_probability)
                    for i in index]
        text = open_clip.tokenize(captions, context_length=config.context_length)  # [B, L]
        image_features, text_features, scale = model(_normalise(images[index]), text)
        logits = scale * image_features @ text_features.T  # [B, B]
        labels = torch.arange(len(index))
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        loss.backward()
        return loss.item()

    # the ramp scales a cosine over the whole run (no warmup offset): the cached teacher and
    # every figure built on it were trained with this shape
    rate_at = partial(lr_at, total=config.steps, warmup=config.warmup_steps, peak=config.lr,
                      ramp_over_decay=True)
    model.train()
    losses = fit(optimizer, loss_of, config.steps, rate_at, progress,
                 "teacher supervised" if supervised else "teacher clip",
                 Resumable(folder / FIT_STATE, modules, rng))
    model.eval()
    report = evaluate(model, config)
    report["final_loss"] = losses[-1]
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config.model_cfg()}))
    save_file(model.state_dict(), folder / "open_clip_model.safetensors")
    return report


@torch.no_grad()
def evaluate(model, config: ClipTeacherConfig) -> dict:
    """Image->text retrieval among held-out captions and zero-shot shape classification."""
    import open_clip

    images, scenes = world_scenes("val", config.eval_pairs, config)
    captions = [s.caption for s in scenes]
    image_features = F.normalize(model.encode_image(_normalise(images)), dim=-1)  # [P, E]
    text = open_clip.tokenize(captions, context_length=config.context_length)
    text_features = F.normalize(model.encode_text(text), dim=-1)  # [P, E]
    best = (image_features @ text_features.T).argmax(1)
    retrieval = np.mean([captions[j] == captions[i] for i, j in enumerate(best.tolist())])
    prompts = open_clip.tokenize([f"a {shape}" for shape in SHAPES], context_length=config.context_length)
    class_features = F.normalize(model.encode_text(prompts), dim=-1)  # [C, E]
    predicted = (image_features @ class_features.T).argmax(1).numpy()
    labels = np.array([s.label for s in scenes])
    return {"retrieval_top1": float(retrieval), "retrieval_chance": 1 / len(captions),
            "zero_shot_shape_acc": float((predicted == labels).mean()),
            "zero_shot_chance": 1 / len(SHAPES), "eval_pairs": len(captions),
            **probe_against_baselines(model, config)}


@torch.no_grad()
def probe_against_baselines(model, config: ClipTeacherConfig, stage: int = 2) -> dict:
    """Linear-probe shape accuracy (L-BFGS, world train -> val) of the teacher's stage features,
    of the same tower with random weights, and of raw pixels: is the teacher worth learning from?"""
    import open_clip

    from mimbench.config import LinearProbeConfig
    from mimbench.evals.probe_heads import lbfgs_probe

    train_images, train_scenes = world_scenes("train", 2 * config.eval_pairs, config)
    val_images, val_scenes = world_scenes("val", config.eval_pairs, config)
    train_y = torch.tensor([s.label for s in train_scenes])
    val_y = torch.tensor([s.label for s in val_scenes])
    torch.manual_seed(config.seed + 1)
    random_tower = open_clip.CLIP(**config.model_cfg()).visual.eval()

    def stage_features(visual, images):
        fmap = visual.forward_intermediates(_normalise(images), indices=[stage],
                                            intermediates_only=True)["image_intermediates"][0]
        return fmap.mean((2, 3))  # [P, C]

    def pixels(images):
        return F.avg_pool2d(images.float() / 255, 4).flatten(1)  # [P, 3 * (S/4)^2]

    probe_cfg = LinearProbeConfig(max_iter=200)
    out = {}
    for name, features in (("teacher", lambda im: stage_features(model.visual, im)),
                           ("random_tower", lambda im: stage_features(random_tower, im)),
                           ("pixels", pixels)):
        tx, vx = features(train_images), features(val_images)
        mean, std = tx.mean(0), tx.std(0) + 1e-6
        predicted, _ = lbfgs_probe((tx - mean) / std, train_y, (vx - mean) / std, len(SHAPES),
                                   probe_cfg, config.seed)
        out[f"linear_probe_{name}"] = (predicted == val_y).float().mean().item()
    return out


def reference(folder: Path) -> dict:
    return {"model": f"local-dir:{folder}", "weights": None}


SMOKE = ClipTeacherConfig(image_size=32, pairs=256, steps=4, batch_size=32, warmup_steps=1, eval_pairs=64)
TEACHERS = [
    Teacher("clip", build, "open_clip_model.safetensors", reference, ClipTeacherConfig(), 5.4),
    Teacher("clip-smoke", build, "open_clip_model.safetensors", reference, SMOKE, 0.1),
    # the control: the same tower told the labels (target.model=teacher:supervised)
    Teacher("supervised", partial(build, supervised=True), "open_clip_model.safetensors", reference,
            ClipTeacherConfig(), 5.4),
    Teacher("supervised-smoke", partial(build, supervised=True), "open_clip_model.safetensors", reference,
            SMOKE, 0.1),
]
