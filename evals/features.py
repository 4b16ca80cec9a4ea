"""Frozen features of the evaluation splits: one vector per labelled image, computed once per
model and data and kept in a run's features/ folder. The linear and k-NN probes read them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from mimbench import config as cfg
from mimbench.distributed import autocast, resolve_device, to_device
from mimbench.data.views import resize_all, teacher_input, uint8_tensor
from mimbench.errors import ConfigError, DataError
from mimbench.evals.backbone import block_tokens, pooled_features
from mimbench.evals.data import (CentreView, class_card, eval_splits, fingerprint, labelled_batches,
                                 student_batch)
from mimbench.targets.frozen import block_index

View = Callable[[object], torch.Tensor]  # one image (PIL or uint8 array) -> its input [3, S, S]
Embed = Callable[[torch.Tensor], torch.Tensor]  # a batch of views [B, 3, S, S] -> [B, D] features
PatchMap = Callable[[list], torch.Tensor]  # a batch of images -> [B, D, h, w] per-patch features
BATCH = 256


@dataclass(frozen=True)
class FrozenModel:
    """What a frozen-feature probe evaluates: images -> one vector each, as view (made in the
    evaluation's DataLoader workers) then embed (on the run's device)."""

    view: View
    embed: Embed
    key: str  # the model and how it embeds: names its cached features
    source: str  # for the card
    features: str  # for the card, e.g. "avg-pooled block 3"
    patch_map: PatchMap  # the same features before pooling, on the model's grid
    tokens: Embed  # a batch of views [B, 3, S, S] -> the same features before pooling [B, N, D]


def student_features(encoder, config, source: str, block: int | None = None) -> FrozenModel:
    """The student's view of an image (centre view at config.student.img_size, normalised) ->
    `block` (by default config.linear.block; the last when that is "all"), its patch tokens
    average-pooled or its cls token."""
    probe = config.linear
    chosen = block if block is not None else -1 if probe.block == "all" else probe.block
    block = block_index(chosen, len(encoder.blocks), "the student")
    size = config.student.img_size
    device = resolve_device(config.run.device)
    encoder.eval().to(device)

    def embed(views):  # on the run's device, under the preset's autocast
        with autocast(device, config.optim.amp):
            pooled = pooled_features(encoder, to_device(views, device), block, probe.pooling)
        return pooled.float().cpu()

    def tokens(views):
        with autocast(device, config.optim.amp):
            return block_tokens(encoder, to_device(views, device), block)[0].float().cpu()  # [B, N, D]

    def patch_map(images):
        h, w = encoder.patch_embed.grid_size
        return tokens(student_batch(images, size)).transpose(1, 2).reshape(len(images), -1, h, w)  # [B, D, h, w]

    return FrozenModel(CentreView(size, config.eval_data.crop_pct), embed,
                       f"{source}|{block}|{probe.pooling}|{size}|{config.eval_data.crop_pct}", source,
                       f"{probe.pooling}-pooled block {block}", patch_map, tokens)


class TeacherView:
    """A target's own view of an image, as pre-training gives it: resized to its input size,
    in [0, 1] ([3, T, T])."""

    def __init__(self, size: int, interpolation: str):
        self.size, self.interpolation = size, interpolation

    def __call__(self, image) -> torch.Tensor:
        return teacher_input(resize_all([uint8_tensor(image)], self.size, self.interpolation))[0]


def target_features(config, source: str) -> FrozenModel:
    """A feature target's own view of an image -> its per-patch features averaged: the teacher
    as a reference row."""
    from mimbench.targets.source import build_target_for

    device = resolve_device(config.run.device)
    provider = build_target_for(config, device=device)
    spec = provider.spec
    if spec.kind != "features":
        raise ConfigError(f"target '{config.target.name}' gives token ids, which have no features "
                          f"to probe; evaluate a feature target's own features.")
    view = TeacherView(spec.input_size, spec.interpolation)

    def tokens(views):  # [B, 3, T, T] -> [B, N, D]
        with autocast(device, config.run.teacher_amp):  # as in pre-training
            return provider(to_device(views, device)).float().cpu()

    def patch_map(images):
        return tokens(torch.stack([view(im) for im in images])).transpose(1, 2).reshape(
            len(images), -1, *spec.grid)  # [B, D, h, w]

    def embed(views):
        return tokens(views).mean(1)  # [B, D]

    options = json.dumps(cfg.to_dict(config)["target"], sort_keys=True)
    return FrozenModel(view, embed, f"{source}|{options}", source,
                       f"the target's {spec.grid[0]}x{spec.grid[1]} features average-pooled, "
                       f"from {spec.input_size}-px views", patch_map, tokens)


@torch.no_grad()
def extract(model: FrozenModel, dataset, workers: int = 0, progress=None, task="features"):
    """Features [M, D] and labels [M] of a whole dataset, its views made in `workers` processes."""
    features, labels = [], []
    batches = labelled_batches(dataset, BATCH, view=model.view, workers=workers,
                               pin_memory=torch.cuda.is_available())
    for i, (views, y) in enumerate(batches):
        features.append(model.embed(views).float())
        labels.append(y)
        if progress:
            progress(task, i + 1, len(batches), {})
    return torch.cat(features), torch.cat(labels)


def cached_features(model: FrozenModel, dataset, cache: Path | None, key: str, **kw):
    """`extract`, stored under `cache` (a run's features/ folder) by a key of everything it depends on."""
    path = cache / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt" if cache else None
    if path is not None and path.exists():
        saved = torch.load(path, weights_only=True)
        return saved["features"], saved["labels"]
    features, labels = extract(model, dataset, **kw)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"features": features, "labels": labels}, tmp)
        tmp.replace(path)
    return features, labels


def frozen_splits(model: FrozenModel, config, cache: Path | None, progress=None,
                  task: str = "probe") -> dict:
    """{'train' | 'val': (features [M, D], labels [M], fingerprint, size), 'classes': their
    class list (class_card)} of the labelled evaluation data."""
    splits = {}
    for split, dataset in zip(("train", "val"), eval_splits(config)):
        if any(dataset[i][1] < 0 for i in (0, len(dataset) - 1)):
            raise DataError(f"the {split} data of the {task} has no labels; use a labelled "
                            f"dataset (class sub-folders) for eval_data.")
        fp = fingerprint(dataset, config.eval_data.name, getattr(config.eval_data, split))
        x, y = cached_features(model, dataset, cache, f"{model.key}|{fp}",
                               workers=config.eval_data.num_workers, progress=progress,
                               task=f"features {split}")
        splits[split] = (x, y, fp, len(dataset))
        splits["classes"] = class_card(dataset)  # the same for both splits (eval_splits)
    return splits


class Labelled(NamedTuple):
    """A probe's data."""

    train_x: torch.Tensor  # [M, D] train features
    train_y: torch.Tensor  # [M] their labels
    val_x: torch.Tensor  # [V, D]
    val_y: torch.Tensor  # [V]
    classes: int  # the number of classes the labels index
    card: dict  # what the probe's card says of model and data


def labelled_features(model: FrozenModel, config, cache: Path | None, progress, task: str) -> Labelled:
    """The frozen train and val features of `model` with their labels, for a probe."""
    splits = frozen_splits(model, config, cache, progress, task)
    (train_x, train_y, *_), (val_x, val_y, *_) = splits["train"], splits["val"]
    classes = int(max(train_y.max(), val_y.max())) + 1
    card = {"model": model.source, "features": model.features, "data": config.eval_data.name,
            **splits["classes"], **{split: {"options": getattr(config.eval_data, split), "size": splits[split][3],
                                            "fingerprint": splits[split][2]} for split in ("train", "val")},
            "classes": classes, "chance": 100 / classes}
    return Labelled(train_x, train_y, val_x, val_y, classes, card)
