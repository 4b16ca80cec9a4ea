"""From one image to what a pre-training step eats: two views of one crop, and a mask.

Randomness comes from a generator seeded by (seed, epoch, index), so a sample is the same
whichever worker or process makes it, and a resumed run sees exactly the same data.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

STUDENT_MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, as BEiT normalises the student view
STUDENT_STD = (0.229, 0.224, 0.225)


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


def uint8_tensor(image) -> torch.Tensor:
    """PIL RGB or uint8 [H, W, 3] array -> [H, W, 3] uint8 tensor of its own. Views stay 8-bit
    and channels-last until a whole batch is on its device: a quarter of the bytes to move, one
    vectorised conversion instead of one per image, and collation stacks contiguous images
    (stacking per-image permuted views was ~20x slower)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8))


def as_pil(image) -> Image.Image:
    """PIL RGB or uint8 [H, W, 3] array -> PIL RGB image."""
    return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))


# torch has no Lanczos, and its nearest modes pick other pixels than PIL's when upscaling
PIL_ONLY = {"nearest": Image.NEAREST, "lanczos": Image.LANCZOS}


def resize(views: torch.Tensor, size: int, interpolation: str) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> uint8 [B, size, size, 3], contiguous; views of that size already
    are used as they are. Bilinear and bicubic use torch's antialiased uint8 kernels, which
    give PIL's result to rounding (tests/test_views.py) and resize a batch in one call;
    nearest and Lanczos are PIL's, one image at a time."""
    if views.shape[1:3] == (size, size):
        return views.contiguous()
    if interpolation in PIL_ONLY:
        return torch.stack([uint8_tensor(as_pil(v.numpy()).resize((size, size), PIL_ONLY[interpolation]))
                            for v in views])
    nchw = views.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)  # [B, 3, H, W]
    out = F.interpolate(nchw, size=(size, size), mode=interpolation, antialias=True)
    return out.permute(0, 2, 3, 1).contiguous()  # channels-last in memory: no copy


def resize_all(crops: list[torch.Tensor], size: int, interpolation: str) -> torch.Tensor:
    """uint8 [h, w, 3] crops -> uint8 [B, size, size, 3]: in one call when the crops share a
    shape (fixed views, or images of one size), else one crop at a time."""
    if len({c.shape for c in crops}) == 1:
        return resize(torch.stack(crops), size, interpolation)
    return torch.cat([resize(c[None], size, interpolation) for c in crops])


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
    """(image, generator) -> the crop both views are taken from, uint8 [h, w, 3], and the
    mask [N] (True = masked); `collate` turns a list of those into a batch of student views
    [B, S, S, 3] and teacher views [B, T, T, 3] of the same crops.

    The views are resized per batch, not per image: crops of one size (fixed views) go through
    one call; 32 64-px crops to 32 px took ~0.35 ms, against ~85-100 us each in PIL
    (docs/performance.md)."""

    def __init__(self, student_size: int, teacher_size: int, teacher_interpolation: str,
                 masker, crop_scale=(1.0, 1.0), hflip=False, jitter=0.0):
        self.student_size = student_size
        self.teacher_size = teacher_size
        self.teacher_interpolation = teacher_interpolation
        self.masker = masker
        self.crop_scale = tuple(crop_scale)
        self.hflip = hflip
        self.jitter = jitter

    def __call__(self, image, g: torch.Generator) -> dict:
        """image: PIL RGB or uint8 [H, W, 3] array."""
        if self.jitter:
            image = color_jitter(as_pil(image), self.jitter, g)
        pixels = uint8_tensor(image)  # [H, W, 3]
        if self.hflip and torch.rand((), generator=g).item() < 0.5:
            pixels = pixels.flip(1)
        top, left, h, w = crop_box(pixels.shape[1], pixels.shape[0], self.crop_scale, g)
        return {"crop": pixels[top:top + h, left:left + w],  # [h, w, 3]
                "mask": self.masker(g).flatten()}  # [N]

    def collate(self, items: list[dict]) -> dict:
        """Samples -> {"student": [B, S, S, 3] and "teacher": [B, T, T, 3] uint8 (student_input()
        and teacher_input() convert them on their device), and the other keys stacked}."""
        crops = [item["crop"] for item in items]
        batch = torch.utils.data.default_collate([{k: v for k, v in item.items() if k != "crop"}
                                                  for item in items])
        student = resize_all(crops, self.student_size, "bicubic")
        same = (self.teacher_size, self.teacher_interpolation) == (self.student_size, "bicubic")
        teacher = student if same else resize_all(crops, self.teacher_size, self.teacher_interpolation)
        return {"student": student, "teacher": teacher, **batch}


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

    The stream is cut into chunks of `chunk` consecutive samples (one forward's batch), and
    chunk c goes to rank c % world_size: W processes together read exactly what one process
    reads, forward by forward, and a stream can restart at any global sample `start` (a
    multiple of chunk x world_size).
    """

    def __init__(self, size: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1,
                 chunk: int = 1):
        self.size, self.seed, self.start = size, seed, start
        self.rank, self.world_size, self.chunk = rank, world_size, chunk

    def _permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def __iter__(self):
        c = self.start // self.chunk + self.rank  # this rank's first chunk
        epoch, order = -1, []
        while True:
            for k in range(c * self.chunk, (c + 1) * self.chunk):
                if k // self.size != epoch:
                    epoch = k // self.size
                    order = self._permutation(epoch)
                yield epoch, order[k % self.size]
            c += self.world_size
