"""From one image to what a pre-training step eats: two views of one crop, and a mask.

Randomness comes from a generator seeded by (seed, epoch, index), so a sample is the same
whichever worker or process makes it, and a resumed run sees exactly the same data.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

STUDENT_MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, as BEiT normalises the student view
STUDENT_STD = (0.229, 0.224, 0.225)
PIL_INTERPOLATION = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR,
                     "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    key = ((seed * 1_000_003 + epoch) * 1_000_000_007 + index) % (2**63)
    return torch.Generator().manual_seed(key)


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=g).item()


def crop_box(width: int, height: int, scale: tuple[float, float], g: torch.Generator):
    """A random resized crop (top, left, h, w): area fraction in `scale`, aspect in [3/4, 4/3]."""
    if scale == (1.0, 1.0):
        return 0, 0, height, width
    area = width * height
    for _ in range(10):
        target = area * _uniform(g, *scale)
        aspect = math.exp(_uniform(g, math.log(3 / 4), math.log(4 / 3)))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=g))
            left = int(torch.randint(0, width - w + 1, (1,), generator=g))
            return top, left, h, w
    side = min(width, height)  # fall back to the central square
    return (height - side) // 2, (width - side) // 2, side, side


def color_jitter(image: Image.Image, strength: float, g: torch.Generator) -> Image.Image:
    """Brightness, contrast and saturation each scaled by a factor in [1 - s, 1 + s]."""
    for adjust in (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation):
        image = adjust(image, _uniform(g, max(0.0, 1 - strength), 1 + strength))
    return image


def uint8_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> [H, W, 3] uint8, in the image's own layout. Views stay 8-bit and
    channels-last until a whole batch is on its device: a quarter of the bytes to move, one
    vectorised conversion instead of one per image, and collation stacks contiguous images
    (stacking per-image permuted views was ~20x slower)."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())


def resize(image: Image.Image, size: int, interpolation) -> Image.Image:
    """A square `size` view; an image of that size already is used as it is."""
    return image if image.size == (size, size) else image.resize((size, size), interpolation)


def _channels_first(views: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W], contiguous."""
    return views.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)


def student_input(views: torch.Tensor) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> float [B, 3, S, S], normalised with the student's statistics."""
    mean = torch.tensor(STUDENT_MEAN, device=views.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STUDENT_STD, device=views.device).view(1, 3, 1, 1) * 255
    return (_channels_first(views) - mean) / std


def teacher_input(views: torch.Tensor) -> torch.Tensor:
    """uint8 [B, T, T, 3] -> float [B, 3, T, T] in [0, 1]; each target applies its own
    normalisation."""
    return _channels_first(views) / 255


class MIMViews:
    """(image, generator) -> student view [S, S, 3] and teacher view [T, T, 3] of the same crop,
    uint8, and the mask [N] (True = masked)."""

    def __init__(self, student_size: int, teacher_size: int, teacher_interpolation: str,
                 masker, crop_scale=(1.0, 1.0), hflip=False, jitter=0.0):
        self.student_size = student_size
        self.teacher_size = teacher_size
        self.teacher_interpolation = PIL_INTERPOLATION[teacher_interpolation]
        self.masker = masker
        self.crop_scale = tuple(crop_scale)
        self.hflip = hflip
        self.jitter = jitter

    def __call__(self, image: Image.Image, g: torch.Generator) -> dict:
        if self.jitter:
            image = color_jitter(image, self.jitter, g)
        if self.hflip and torch.rand((), generator=g).item() < 0.5:
            image = TF.hflip(image)
        top, left, h, w = crop_box(image.width, image.height, self.crop_scale, g)
        crop = image if (w, h) == image.size else image.crop((left, top, left + w, top + h))
        student = uint8_tensor(resize(crop, self.student_size, Image.BICUBIC))
        same = (self.teacher_size, self.teacher_interpolation) == (self.student_size, Image.BICUBIC)
        teacher = student if same else uint8_tensor(resize(crop, self.teacher_size, self.teacher_interpolation))
        return {"student": student,  # [S, S, 3] uint8: student_input() on the batch
                "teacher": teacher,  # [T, T, 3] uint8: teacher_input() on the batch
                "mask": self.masker(g).flatten()}  # [N]


class MIMDataset(torch.utils.data.Dataset):
    """Wraps an image dataset; indexed by (epoch, index) pairs from StreamSampler."""

    def __init__(self, images, views: MIMViews, seed: int):
        self.images, self.views, self.seed = images, views, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        image, _ = self.images[index]
        return {**self.views(image, sample_generator(self.seed, epoch, index)), "index": index}


class StreamSampler(torch.utils.data.Sampler):
    """An endless stream of (epoch, index): epoch e is a permutation seeded by (seed, e).

    Global sample k of the stream goes to rank k % world_size, so W processes together read
    exactly what one process reads, and a stream can restart at any global sample `start`.
    """

    def __init__(self, size: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1):
        self.size, self.seed, self.start = size, seed, start
        self.rank, self.world_size = rank, world_size

    def _permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def __iter__(self):
        k = self.start + self.rank
        epoch, order = -1, []
        while True:
            if k // self.size != epoch:
                epoch = k // self.size
                order = self._permutation(epoch)
            yield epoch, order[k % self.size]
            k += self.world_size
