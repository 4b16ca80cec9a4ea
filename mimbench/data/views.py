"""From one image to what a pre-training step eats: two views of one crop, and a mask.

Randomness comes from a generator seeded by (seed, epoch, index), so a sample is the same
whichever worker or process makes it, and a resumed run sees exactly the same data.
"""

from __future__ import annotations

import math

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


class MIMViews:
    """(image, generator) -> student view [3, S, S] normalised, teacher view [3, T, T] in [0, 1]
    of the same crop, and the mask [N] (True = masked)."""

    def __init__(self, student_size: int, teacher_size: int, teacher_interpolation: str,
                 masker, crop_scale=(1.0, 1.0), hflip=False, jitter=0.0):
        self.student_size = student_size
        self.teacher_size = teacher_size
        self.teacher_interpolation = PIL_INTERPOLATION[teacher_interpolation]
        self.masker = masker
        self.crop_scale = tuple(crop_scale)
        self.hflip = hflip
        self.jitter = jitter
        self.mean = torch.tensor(STUDENT_MEAN).view(3, 1, 1)
        self.std = torch.tensor(STUDENT_STD).view(3, 1, 1)

    def __call__(self, image: Image.Image, g: torch.Generator) -> dict:
        if self.jitter:
            image = color_jitter(image, self.jitter, g)
        if self.hflip and torch.rand((), generator=g).item() < 0.5:
            image = TF.hflip(image)
        top, left, h, w = crop_box(image.width, image.height, self.crop_scale, g)
        crop = image.crop((left, top, left + w, top + h))
        student = TF.to_tensor(crop.resize((self.student_size,) * 2, Image.BICUBIC))
        teacher = TF.to_tensor(crop.resize((self.teacher_size,) * 2, self.teacher_interpolation))
        return {"student": (student - self.mean) / self.std,  # [3, S, S]
                "teacher": teacher,  # [3, T, T]
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
        return self.views(image, sample_generator(self.seed, epoch, index))


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
