"""Weighted k-nearest-neighbour classification on frozen features, as DINO evaluates it:
features L2-normalised, the k most cosine-similar train images vote for their class with
weight exp(similarity / temperature). No training, no hyper-parameter fitted to the data."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mimbench.evals.features import FrozenModel, frozen_splits, probe_card

CHUNK = 1024  # val images compared with the whole train set at once


def knn_predict(train_x, train_y, val_x, classes: int, k: int, temperature: float) -> torch.Tensor:
    """[M, D], [M], [V, D] -> the predicted class of each val image, [V]."""
    train_x, val_x = F.normalize(train_x, dim=1), F.normalize(val_x, dim=1)
    k = min(k, len(train_x))
    out = []
    for start in range(0, len(val_x), CHUNK):
        similarity = val_x[start:start + CHUNK] @ train_x.T  # [c, M]
        top, index = similarity.topk(k, dim=1)  # [c, k]
        votes = torch.zeros(len(top), classes)
        votes.scatter_add_(1, train_y[index], (top / temperature).exp())
        out.append(votes.argmax(1))
    return torch.cat(out)


def knn_probe(model: FrozenModel, config, cache: Path | None = None, progress=None,
              preset: str | None = None) -> dict:
    """Top-1 of the weighted k-NN classifier; the result with its protocol card."""
    started = time.perf_counter()
    cfg = config.knn
    splits = frozen_splits(model, config, cache, progress, "k-NN probe")
    (train_x, train_y, *_), (val_x, val_y, *_) = splits["train"], splits["val"]
    classes = int(max(train_y.max(), val_y.max())) + 1
    predicted = knn_predict(train_x, train_y, val_x, classes, cfg.k, cfg.temperature)
    top1 = (predicted == val_y).float().mean().item() * 100
    card = {"protocol": "DINO weighted k-NN", **dataclasses.asdict(cfg), **probe_card(model, config, splits),
            "classes": classes, "chance": 100 / classes, "wall_time_s": time.perf_counter() - started}
    return {"top1": top1, "card": card}
