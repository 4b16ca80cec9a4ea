"""Segmentation metrics as the field computes them (mmseg / BEiT)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def confusion_matrix(pred, label, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """[C, C] counts of (true class, predicted class) over the pixels not labelled ignore_index."""
    pred = torch.as_tensor(np.asarray(pred)).long().flatten()
    label = torch.as_tensor(np.asarray(label)).long().flatten()
    keep = label != ignore_index
    index = label[keep] * num_classes + pred[keep]
    return torch.bincount(index, minlength=num_classes**2).view(num_classes, num_classes).numpy()


def segmentation_metrics(preds: Sequence, labels: Sequence, num_classes: int,
                         ignore_index: int = 255, background: int | None = None) -> dict:
    """Intersection and union per class summed over all images; IoU = I / U.

    Returns mIoU (mean over classes with a non-zero union), aAcc (pixel accuracy) and
    per_class_iou (NaN where a class has zero union), all in percent; with a `background`
    class, also mIoU_objects: the mean over the other classes.
    """
    total = np.zeros((num_classes, num_classes), dtype=np.int64)
    for pred, label in zip(preds, labels, strict=True):
        total += confusion_matrix(pred, label, num_classes, ignore_index)
    intersection = np.diag(total).astype(np.float64)
    union = total.sum(0) + total.sum(1) - np.diag(total)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / union, np.nan)
    out = {"mIoU": _mean_iou(iou), "aAcc": float(intersection.sum() / max(total.sum(), 1) * 100),
           "per_class_iou": [float(v * 100) for v in iou]}
    if background is not None:
        out["mIoU_objects"] = _mean_iou(np.delete(iou, background))
    return out


def _mean_iou(iou: np.ndarray) -> float:
    """Mean IoU in percent over the classes that occur (NaN when none does)."""
    return float(np.nanmean(iou) * 100) if np.any(~np.isnan(iou)) else float("nan")
