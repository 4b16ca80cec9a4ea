"""A linear segmentation probe on frozen patch features: each patch's features, standardised,
through one multinomial logistic regression (the linear probe's L-BFGS protocol) to the class
most of its pixels have; at test time the patch logits are upsampled bilinearly to the label
maps. No decoder learns the task and no weight of the model moves, so it reads what the
representation holds at each position (on the world, UperNet fine-tuning lets a random-init
student score well by learning segmentation in its own head: docs/results/search_dvae)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from mimbench.evals.data import fingerprint
from mimbench.evals.features import FrozenModel
from mimbench.evals.probe_heads import choose_and_fit
from mimbench.evals.metrics import segmentation_metrics
from mimbench.evals.segmentation import IGNORE, headline, segmentation_data

MAX_PATCHES = 20_000  # training patches the regression sees, sampled evenly over images (a
# 128-d student has 1,161 weights to fit; 100,000 patches took ~3 CPU-minutes per probe)
BATCH = 256


def patch_labels(labels: torch.Tensor, grid: tuple[int, int], classes: int) -> torch.Tensor:
    """[B, H, W] label maps -> [B, h, w]: the class most of each patch's pixels have (IGNORE
    where ignored pixels are the majority)."""
    index = torch.where(labels == IGNORE, classes, labels)  # ignored pixels as one more class
    counts = F.adaptive_avg_pool2d(F.one_hot(index, classes + 1).permute(0, 3, 1, 2).float(), grid)
    majority = counts.argmax(1)  # [B, h, w]
    return torch.where(majority == classes, IGNORE, majority)


def _batches(dataset, model: FrozenModel):
    """(patch features [b, D, h, w], label maps [b, H, W]) over the dataset, in order."""
    for start in range(0, len(dataset), BATCH):
        items = [dataset[i] for i in range(start, min(start + BATCH, len(dataset)))]
        labels = torch.stack([torch.from_numpy(np.asarray(label, dtype=np.int64)) for _, label in items])
        with torch.no_grad():
            yield model.patch_map([image for image, _ in items]).float(), labels


def segmentation_probe(model: FrozenModel, config, progress=None, preset: str | None = None) -> dict:
    train_set, val_set = segmentation_data(config, "train"), segmentation_data(config, "val")
    classes = train_set.num_classes
    g = torch.Generator().manual_seed(config.run.seed)
    xs, ys, keep = [], [], None
    for i, (maps, labels) in enumerate(_batches(train_set, model)):
        b, d, h, w = maps.shape
        if keep is None:  # the fraction of patches that keeps the regression at MAX_PATCHES
            keep = min(1.0, MAX_PATCHES / (len(train_set) * h * w))
        x = maps.permute(0, 2, 3, 1).reshape(-1, d)  # [b*h*w, D]
        y = patch_labels(labels, (h, w), classes).reshape(-1)
        chosen = (torch.rand(len(y), generator=g) < keep) & (y != IGNORE)
        xs.append(x[chosen])
        ys.append(y[chosen])
        if progress:
            progress("segmentation probe train", i + 1, -(-len(train_set) // BATCH), {})
    train_x, train_y = torch.cat(xs), torch.cat(ys)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    weight, bias, details = choose_and_fit((train_x - mean) / std, train_y, classes, config.linear,
                                           config.run.seed)
    preds, truth = [], []
    for maps, labels in _batches(val_set, model):
        x = (maps.permute(0, 2, 3, 1) - mean) / std  # [b, h, w, D]
        logits = (x @ weight + bias).permute(0, 3, 1, 2)  # [b, classes, h, w]
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        preds += list(logits.argmax(1).numpy())
        truth += list(labels.numpy())
    background = getattr(val_set, "background_class", None)
    metrics = segmentation_metrics(preds, truth, classes, IGNORE, background)
    card = {"protocol": "linear segmentation probe (frozen patch features, L-BFGS logistic "
                        "regression per patch, logits upsampled bilinearly)",
            "headline": headline(background), "model": model.source,
            "features": f"per patch, before pooling: {model.features}", "classes": classes,
            "train_patches": len(train_y), "patch_labels": "majority class of each patch's pixels",
            **{k: v for k, v in dataclasses.asdict(config.linear).items()
               if k in ("regularisation", "holdout", "max_iter")}, **details,
            "train": {"size": len(train_set), "fingerprint": fingerprint(train_set, "seg-train", {})},
            "val": {"size": len(val_set), "fingerprint": fingerprint(val_set, "seg-val", {})},
            "seed": config.run.seed}
    return {**metrics, "card": card}
