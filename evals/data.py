"""Labelled images for the evaluations, resized and normalised as the student saw them."""

from __future__ import annotations

import hashlib
import json

import math

import numpy as np
import torch
import torch.nn.functional as F

from mimbench.data import build_dataset
from mimbench.data.views import resize_all, student_input, uint8_tensor


def eval_dataset(config, split: str):
    options = getattr(config.eval_data, split)
    return build_dataset(config.eval_data.name, **options)


def student_batch(images: list, size: int) -> torch.Tensor:
    """PIL images or uint8 [H, W, 3] arrays -> [B, 3, size, size], resized whole (aspect not
    kept: segmentation resizes its label maps alike) and normalised as the student's views."""
    return student_input(resize_all([uint8_tensor(im) for im in images], size, "bicubic"))


def centre_view(image, size: int, crop_pct: float) -> torch.Tensor:
    """timm's evaluation transform (create_transform, is_training=False) on uint8 pixels: the
    shorter side resized to floor(size / crop_pct) with bicubic, then the centre size x size
    crop (BEiT, MAE, DINO: 256 then 224, crop_pct 0.875). [H, W, 3] -> [size, size, 3]."""
    view = uint8_tensor(image)
    h, w = view.shape[:2]
    short = math.floor(size / crop_pct)
    if h > w:
        new_h, new_w = int(short * h / w), short
    elif h < w:
        new_h, new_w = short, int(short * w / h)
    else:
        new_h = new_w = short
    if (new_h, new_w) != (h, w):
        nchw = view.permute(2, 0, 1)[None].contiguous(memory_format=torch.channels_last)
        view = F.interpolate(nchw, size=(new_h, new_w), mode="bicubic", antialias=True)[0].permute(1, 2, 0)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return view[top:top + size, left:left + size].contiguous()


def eval_batch(images: list, size: int, crop_pct: float) -> torch.Tensor:
    """PIL images or uint8 [H, W, 3] arrays -> [B, 3, size, size]: centre views (centre_view),
    normalised as the student's views. Square images of side `size` pass unchanged at crop_pct 1."""
    return student_input(torch.stack([centre_view(im, size, crop_pct) for im in images]))


def fingerprint(dataset, name: str, options: dict) -> str:
    """A short hash of what a split holds: its options, size, labels and some pixels."""
    digest = hashlib.sha256(json.dumps([name, options, len(dataset)], sort_keys=True).encode())
    probe = sorted({0, len(dataset) // 2, len(dataset) - 1})
    for i in probe:
        image, label = dataset[i]
        digest.update(np.asarray(image).tobytes())
        digest.update(str(label).encode())
    return digest.hexdigest()[:16]


class Batches:
    """Iterate (images [B, 3, S, S], labels [B]) over a dataset, in order or in `order`, as
    centre views (eval_batch); with drop_last, only full batches."""

    def __init__(self, dataset, size: int, batch_size: int = 256, order=None, drop_last=False,
                 crop_pct: float = 1.0):
        self.dataset, self.size, self.batch_size, self.crop_pct = dataset, size, batch_size, crop_pct
        self.order = list(range(len(dataset))) if order is None else [int(i) for i in order]
        self.drop_last = drop_last

    def __len__(self):
        if self.drop_last:
            return len(self.order) // self.batch_size
        return (len(self.order) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        for b in range(len(self)):
            items = [self.dataset[i] for i in self.order[b * self.batch_size:(b + 1) * self.batch_size]]
            yield (eval_batch([im for im, _ in items], self.size, self.crop_pct),
                   torch.tensor([label for _, label in items]))
