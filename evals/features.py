"""Frozen features of the evaluation splits: one vector per labelled image, computed once per
model and data and kept in a run's features/ folder. The linear and k-NN probes read them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from mimbench import config as cfg
from mimbench.distributed import autocast, resolve_device, to_device
from mimbench.data.views import resize_all, teacher_input, uint8_tensor
from mimbench.errors import ConfigError, DataError
from mimbench.evals.backbone import block_tokens, pooled_features
from mimbench.evals.data import class_card, eval_batch, eval_splits, fingerprint, student_batch
from mimbench.targets.frozen import block_index

Embed = Callable[[list], torch.Tensor]  # a batch of images (uint8 arrays) -> [B, D] features
PatchMap = Callable[[list], torch.Tensor]  # a batch of images -> [B, D, h, w] per-patch features
BATCH = 256


@dataclass(frozen=True)
class FrozenModel:
    """What a frozen-feature probe evaluates: images -> one vector each."""

    embed: Embed
    key: str  # the model and how it embeds: names its cached features
    source: str  # for the card
    features: str  # for the card, e.g. "avg-pooled block 3"
    patch_map: PatchMap  # the same features before pooling, on the model's grid


def student_features(encoder, config, source: str) -> FrozenModel:
    """The student's view of an image (config.student.img_size, normalised) -> the probe's
    block (config.linear.block), its patch tokens average-pooled or its cls token."""
    probe = config.linear
    block = block_index(probe.block, len(encoder.blocks), "the student")
    size = config.student.img_size
    device = resolve_device(config.run.device)
    encoder.eval().to(device)

    def embed(images):  # on the run's device, under the preset's autocast
        with autocast(device, config.optim.amp):
            views = eval_batch(images, size, config.eval_data.crop_pct)
            pooled = pooled_features(encoder, to_device(views, device), block, probe.pooling)
        return pooled.float().cpu()

    def patch_map(images):
        with autocast(device, config.optim.amp):
            tokens, _ = block_tokens(encoder, to_device(student_batch(images, size), device), block)
        h, w = encoder.patch_embed.grid_size
        return tokens.float().cpu().transpose(1, 2).reshape(len(images), -1, h, w)  # [B, D, h, w]

    return FrozenModel(embed, f"{source}|{block}|{probe.pooling}|{size}", source,
                       f"{probe.pooling}-pooled block {block}", patch_map)


def target_features(config, source: str) -> FrozenModel:
    """A feature target's own view of an image (resized to its input size, as pre-training
    gives it) -> its per-patch features averaged: the teacher as a reference row."""
    from mimbench.engine import build_target_for

    provider = build_target_for(config)
    device = resolve_device(config.run.device)
    if isinstance(provider, torch.nn.Module):
        provider.to(device)
    spec = provider.spec
    if spec.kind != "features":
        raise ConfigError(f"target '{config.target.name}' gives token ids, which have no features "
                          f"to probe; evaluate a feature target's own features.")

    def patch_map(images):
        views = resize_all([uint8_tensor(im) for im in images], spec.input_size, spec.interpolation)
        with autocast(device, config.run.teacher_amp):  # as in pre-training
            tokens = provider(teacher_input(to_device(views, device))).float().cpu()  # [B, N, D]
        return tokens.transpose(1, 2).reshape(len(images), -1, *spec.grid)  # [B, D, h, w]

    def embed(images):
        return patch_map(images).mean((2, 3))  # [B, D]

    options = json.dumps(cfg.to_dict(config)["target"], sort_keys=True)
    return FrozenModel(embed, f"{source}|{options}", source,
                       f"the target's {spec.grid[0]}x{spec.grid[1]} features average-pooled, "
                       f"from {spec.input_size}-px views", patch_map)


@torch.no_grad()
def extract(embed: Embed, dataset, progress=None, task="features"):
    """Features [M, D] and labels [M] of a whole dataset."""
    features, labels = [], []
    batches = range(0, len(dataset), BATCH)
    for i, start in enumerate(batches):
        items = [dataset[j] for j in range(start, min(start + BATCH, len(dataset)))]
        features.append(embed([image for image, _ in items]).float())
        labels.append(torch.tensor([label for _, label in items]))
        if progress:
            progress(task, i + 1, len(batches), {})
    return torch.cat(features), torch.cat(labels)


def cached_features(embed: Embed, dataset, cache: Path | None, key: str, **kw):
    """`extract`, stored under `cache` (a run's features/ folder) by a key of everything it depends on."""
    path = cache / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt" if cache else None
    if path is not None and path.exists():
        saved = torch.load(path, weights_only=True)
        return saved["features"], saved["labels"]
    features, labels = extract(embed, dataset, **kw)
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
        x, y = cached_features(model.embed, dataset, cache, f"{model.key}|{fp}", progress=progress,
                               task=f"features {split}")
        splits[split] = (x, y, fp, len(dataset))
        splits["classes"] = class_card(dataset)  # the same for both splits (eval_splits)
    return splits


def probe_card(model: FrozenModel, config, splits: dict) -> dict:
    """What a probe's card says about its model and data."""
    return {"model": model.source, "features": model.features, "data": config.eval_data.name,
            **splits["classes"], **{split: {"options": getattr(config.eval_data, split), "size": splits[split][3],
                       "fingerprint": splits[split][2]} for split in ("train", "val")}}
