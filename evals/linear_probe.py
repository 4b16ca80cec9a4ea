"""Linear probing on frozen features: CLIP's L-BFGS logistic regression or MAE's BN + linear
(the heads: mimbench.evals.probe_heads)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from mimbench.evals.features import FrozenModel, labelled_features, student_features
from mimbench.evals.probe_heads import lbfgs_probe, mae_probe

log = logging.getLogger(__name__)
REFERENCES = {  # docs/protocols.md: ViT-B/16, ImageNet-1k
    "paper": {"mvp_300ep": 75.4, "beit_800ep": 56.7, "tolerance": 1.0, "dataset": "ImageNet-1k"},
}


def probe_blocks(encoder, config, source: str, cache: Path | None = None, progress=None,
                 preset: str | None = None) -> dict:
    """linear.block=all: the linear probe on each block's features, first to last, alike. The
    result is the last block's, with each block's top-1 beside it (`top1_block{i}`): the curve
    suites plot, no block chosen by its val score."""
    results = [linear_probe(student_features(encoder, config, source, block), config, cache, progress, preset)
               for block in range(len(encoder.blocks))]
    result = results[-1]
    result |= {f"top1_block{i}": r["top1"] for i, r in enumerate(results)}
    result["card"]["blocks"] = f"each of {len(results)} blocks probed alike; top1 is the last block's"
    return result


def linear_probe(model: FrozenModel, config, cache: Path | None = None, progress=None,
                 preset: str | None = None) -> dict:
    """Top-1 of a linear classifier on frozen features; the result with its protocol card."""
    cfg = config.linear
    data = labelled_features(model, config, cache, progress, "linear probe")
    mean, std = data.train_x.mean(0), data.train_x.std(0) + 1e-6  # standardise with train statistics
    train_x, val_x = (data.train_x - mean) / std, (data.val_x - mean) / std
    probe = lbfgs_probe if cfg.protocol == "lbfgs" else mae_probe
    predicted, details = probe(train_x, data.train_y, val_x, data.classes, cfg, config.run.seed)
    card = {"protocol": cfg.protocol, **dataclasses.asdict(cfg), **data.card,
            "standardised": "each feature with train statistics", "seed": config.run.seed,
            **details, "reference": REFERENCES.get(preset)}
    return {"top1": (predicted == data.val_y).float().mean().item() * 100, "card": card,
            "per_image": (predicted, data.val_y)}
