"""Labelled images for the evaluations, resized and normalised as the student saw them."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from mimbench.data import build_dataset
from mimbench.data.views import resize_all, student_input, uint8_tensor


def eval_dataset(config, split: str):
    options = getattr(config.eval_data, split)
    return build_dataset(config.eval_data.name, **options)


def student_batch(images: list, size: int) -> torch.Tensor:
    """PIL images or uint8 [H, W, 3] arrays -> [B, 3, size, size], resized and normalised as the
    student's pre-training view is."""
    return student_input(resize_all([uint8_tensor(im) for im in images], size, "bicubic"))


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
    """Iterate (images [B, 3, S, S], labels [B]) over a dataset, in order or in `order`;
    with drop_last, only full batches."""

    def __init__(self, dataset, size: int, batch_size: int = 256, order=None, drop_last=False):
        self.dataset, self.size, self.batch_size = dataset, size, batch_size
        self.order = list(range(len(dataset))) if order is None else [int(i) for i in order]
        self.drop_last = drop_last

    def __len__(self):
        if self.drop_last:
            return len(self.order) // self.batch_size
        return (len(self.order) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        for b in range(len(self)):
            items = [self.dataset[i] for i in self.order[b * self.batch_size:(b + 1) * self.batch_size]]
            yield (student_batch([im for im, _ in items], self.size),
                   torch.tensor([label for _, label in items]))
