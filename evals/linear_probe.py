"""Linear probing on frozen features: CLIP's L-BFGS logistic regression or MAE's BN + linear
(the heads: mimbench.evals.probe_heads)."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from mimbench.evals.features import FrozenModel, frozen_splits, probe_card
from mimbench.evals.probe_heads import lbfgs_probe, mae_probe

log = logging.getLogger(__name__)
REFERENCES = {  # docs/protocols.md: ViT-B/16, ImageNet-1k
    "paper": {"mvp_300ep": 75.4, "beit_800ep": 56.7, "tolerance": 1.0, "dataset": "ImageNet-1k"},
}


def linear_probe(model: FrozenModel, config, cache: Path | None = None, progress=None,
                 preset: str | None = None) -> dict:
    """Top-1 of a linear classifier on frozen features; the result with its protocol card."""
    started = time.perf_counter()
    cfg = config.linear
    splits = frozen_splits(model, config, cache, progress, "linear probe")
    (train_x, train_y, *_), (val_x, val_y, *_) = splits["train"], splits["val"]
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6  # standardise with train statistics
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    classes = int(max(train_y.max(), val_y.max())) + 1
    probe = lbfgs_probe if cfg.protocol == "lbfgs" else mae_probe
    top1, details = probe(train_x, train_y, val_x, val_y, classes, cfg, config.run.seed)
    card = {"protocol": cfg.protocol, **dataclasses.asdict(cfg), **probe_card(model, config, splits),
            "standardised": "each feature with train statistics", "classes": classes,
            "chance": 100 / classes, "seed": config.run.seed,
            "wall_time_s": time.perf_counter() - started, **details,
            "reference": REFERENCES.get(preset)}
    return {"top1": top1, "card": card}
