"""Weighted k-nearest-neighbour classification on frozen features, as DINO evaluates it:
features L2-normalised, the k most cosine-similar train images vote for their class with
weight exp(similarity / temperature). No training, no hyper-parameter fitted to the data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from mimbench.distributed import resolve_device
from mimbench.evals.features import FrozenModel, labelled_features

CHUNK = 4096  # val and train rows compared at once: memory ~ CHUNK x (CHUNK + k) similarities


def knn_predict(train_x, train_y, val_x, classes: int, k: int, temperature: float,
                chunk: int = CHUNK, device: str | torch.device = "cpu") -> torch.Tensor:
    """[M, D], [M], [V, D] -> the predicted class of each val image, [V]. Both splits are read
    in chunks moved to `device`, keeping each query's k best as the train chunks go by, so
    memory stays bounded for any split size. Ties: among equal similarities the lower train
    index is nearer; among equal votes the lower class wins."""
    train_x, val_x = F.normalize(train_x.float(), dim=1), F.normalize(val_x.float(), dim=1)
    labels = train_y.to(device)
    k = min(k, len(train_x))
    out = []
    for v in range(0, len(val_x), chunk):
        query = val_x[v:v + chunk].to(device)  # [c, D]
        best = query.new_empty(len(query), 0)  # [c, <= k] similarities, best first
        index = torch.empty(len(query), 0, dtype=torch.long, device=device)  # their train rows
        for t in range(0, len(train_x), chunk):
            similarity = query @ train_x[t:t + chunk].to(device).T  # [c, t']
            rows = torch.arange(t, t + similarity.shape[1], device=device).expand_as(similarity)
            candidates, rows = torch.cat([best, similarity], 1), torch.cat([index, rows], 1)
            # a stable sort keeps equal similarities in train order: the lower index first
            order = candidates.sort(dim=1, descending=True, stable=True).indices[:, :k]
            best, index = candidates.gather(1, order), rows.gather(1, order)
        votes = torch.zeros(len(query), classes, device=device)
        votes.scatter_add_(1, labels[index], (best / temperature).exp())
        out.append(votes.argmax(1).cpu())  # the first of equal maxima: the lower class
    return torch.cat(out)


def knn_probe(model: FrozenModel, config, cache: Path | None = None, progress=None,
              preset: str | None = None) -> dict:
    """Top-1 of the weighted k-NN classifier; the result with its protocol card."""
    data = labelled_features(model, config, cache, progress, "k-NN probe")
    predicted = knn_predict(data.train_x, data.train_y, data.val_x, data.classes, config.knn.k,
                            config.knn.temperature, device=resolve_device(config.run.device))
    top1 = (predicted == data.val_y).float().mean().item() * 100
    card = {"protocol": "DINO weighted k-NN", **dataclasses.asdict(config.knn), **data.card}
    return {"top1": top1, "card": card, "per_image": (predicted, data.val_y)}
