"""Labelled images for the evaluations, resized and normalised as the student saw them."""

from __future__ import annotations

import hashlib
import json

import math

import numpy as np
import torch
import torch.nn.functional as F

from mimbench.data import build_dataset
from mimbench.errors import DataError
from mimbench.data.views import STUDENT_MEAN, STUDENT_STD, as_pil, resize_all, student_input, uint8_tensor


def eval_dataset(config, split: str):
    options = getattr(config.eval_data, split)
    return build_dataset(config.eval_data.name, **options)


def eval_splits(config):
    """The evaluation's (train, val) datasets, refused when their class lists differ (a label
    would name another class in each split)."""
    train, val = eval_dataset(config, "train"), eval_dataset(config, "val")
    a, b = getattr(train, "classes", None), getattr(val, "classes", None)
    if a and b and list(a) != list(b):
        missing, extra = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        detail = "; ".join(part for part in (
            f"val lacks {', '.join(missing[:5])}" if missing else "",
            f"val has {', '.join(extra[:5])} that train lacks" if extra else "") if part)
        raise DataError(f"the evaluation's train and val splits hold different classes "
                        f"({detail or 'in another order'}); give both splits the same class "
                        f"sub-folders, or labels would name other classes in each.")
    return train, val


def class_card(dataset) -> dict:
    """The class list a split's labels index, and its hash, for a card."""
    classes = list(getattr(dataset, "classes", None) or [])
    digest = hashlib.sha256(json.dumps(classes).encode()).hexdigest()[:16]
    return {"classes": len(classes), "class_names": classes[:1000], "classes_sha256": digest}


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


class CentreView:
    """An evaluation view: (image, label) -> (normalised [3, S, S] centre view, label)."""

    def __init__(self, size: int, crop_pct: float):
        self.size, self.crop_pct = size, crop_pct

    def __call__(self, image) -> torch.Tensor:
        return eval_batch([image], self.size, self.crop_pct)[0]


class FinetuneAugmentation:
    """BEiT's and MAE's fine-tuning views, by timm's own transform: RandomResizedCrop (0.08-1,
    bicubic), flip, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25 (pixel mode), then
    the student's normalisation. PIL image or uint8 array -> [3, S, S]."""

    def __init__(self, size: int):
        from timm.data import create_transform

        self.transform = create_transform(
            input_size=size, is_training=True, scale=(0.08, 1.0), hflip=0.5,
            auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic", re_prob=0.25,
            re_mode="pixel", re_count=1, mean=STUDENT_MEAN, std=STUDENT_STD)

    def __call__(self, image) -> torch.Tensor:
        return self.transform(as_pil(image))


class LabelledViews(torch.utils.data.Dataset):
    """(image, label) pairs of `dataset` as (view(image), label)."""

    def __init__(self, dataset, view):
        self.dataset, self.view = dataset, view

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        image, label = self.dataset[i]
        return self.view(image), label


def labelled_batches(dataset, batch_size: int, view, order=None, drop_last=False,
                     workers: int = 0, pin_memory: bool = False, seed: int = 0):
    """(views [B, ...], labels [B]) over a dataset, in order or in `order`, each image made
    into its input by `view` (CentreView, FinetuneAugmentation, ...); with drop_last, only full
    batches. Views are made in `workers` DataLoader processes (none: in this one), whose random
    augmentations are seeded by `seed` (the global RNG is left alone)."""
    views = LabelledViews(dataset, view)
    order = list(range(len(dataset))) if order is None else [int(i) for i in order]
    return torch.utils.data.DataLoader(views, batch_size=batch_size, sampler=order,
                                       drop_last=drop_last, num_workers=workers,
                                       pin_memory=pin_memory,
                                       generator=torch.Generator().manual_seed(seed))
