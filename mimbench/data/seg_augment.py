"""BEiT's (mmseg's) ADE20K training augmentation: random rescale, crop with a cap on the
largest class, flip, photometric distortion, pad. Image and label map move together."""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from mimbench.data.views import STUDENT_MEAN, STUDENT_STD, as_pil

IGNORE = 255


def uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=g).item()


def coin(g: torch.Generator) -> bool:
    return torch.rand((), generator=g).item() < 0.5


def rescaled_size(size: tuple[int, int], scale: tuple[float, float]) -> tuple[int, int]:
    """(w, h) resized keeping the aspect ratio so the long side fits max(scale) and the short
    side min(scale) (mmseg's keep_ratio rule)."""
    w, h = size
    factor = min(max(scale) / max(w, h), min(scale) / min(w, h))
    return max(1, round(w * factor)), max(1, round(h * factor))


def random_rescale(image: Image.Image, label: np.ndarray, scale: tuple[int, int],
                   ratio_range: tuple[float, float], g: torch.Generator):
    """Scale (long, short) times a ratio in `ratio_range`, then resize keeping the aspect ratio
    so the long side fits the long bound and the short side the short bound."""
    ratio = uniform(g, *ratio_range)
    size = rescaled_size(image.size, (max(scale) * ratio, min(scale) * ratio))
    resized_label = Image.fromarray(label.astype(np.uint8)).resize(size, Image.NEAREST)
    return image.resize(size, Image.BILINEAR), np.asarray(resized_label, dtype=np.int64)


def random_crop(image: Image.Image, label: np.ndarray, crop: int, cat_max_ratio: float,
                g: torch.Generator, tries: int = 10):
    """A crop of side `crop` (or the whole side when smaller); up to `tries` draws until no
    class covers more than `cat_max_ratio` of its labelled pixels, else the last draw."""
    w, h = image.size
    ch, cw = min(crop, h), min(crop, w)
    for _ in range(tries):
        top = int(torch.randint(0, h - ch + 1, (), generator=g))
        left = int(torch.randint(0, w - cw + 1, (), generator=g))
        window = label[top:top + ch, left:left + cw]
        counts = np.bincount(window[window != IGNORE].ravel())
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
    return image.crop((left, top, left + cw, top + ch)), window


def photometric_distortion(image: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """[3, H, W] in [0, 1]: brightness +-32/255, contrast 0.5-1.5 (before or after the
    colour changes), saturation 0.5-1.5, hue +-18/180 of the circle; each with p 0.5."""
    if coin(g):
        image = (image + uniform(g, -32, 32) / 255).clamp(0, 1)
    contrast_first = coin(g)
    contrast = coin(g), uniform(g, 0.5, 1.5)
    if contrast_first and contrast[0]:
        image = (image * contrast[1]).clamp(0, 1)
    if coin(g):
        image = TF.adjust_saturation(image, uniform(g, 0.5, 1.5))
    if coin(g):
        image = TF.adjust_hue(image, uniform(g, -18, 18) / 180)
    if not contrast_first and contrast[0]:
        image = (image * contrast[1]).clamp(0, 1)
    return image


def augment(image, label: np.ndarray, crop: int, g: torch.Generator,
            scale=(2048, 512), ratio_range=(0.5, 2.0), cat_max_ratio=0.75,
            mean=STUDENT_MEAN, std=STUDENT_STD):
    """image: PIL RGB or uint8 [H, W, 3] array -> image [3, crop, crop] normalised with
    mean/std, then zero padded (mmseg's train pipeline: Normalize before Pad, pad value 0, so
    padding is the mean colour, as at inference), label [crop, crop] int64 (255 padded)."""
    image, label = random_rescale(as_pil(image), label, scale, ratio_range, g)
    image, label = random_crop(image, label, crop, cat_max_ratio, g)
    x = TF.to_tensor(image)  # [3, h, w]
    y = torch.from_numpy(np.ascontiguousarray(label))  # [h, w]
    if coin(g):
        x, y = x.flip(-1), y.flip(-1)
    x = TF.normalize(photometric_distortion(x, g), mean, std)
    pad = (0, crop - x.shape[-1], 0, crop - x.shape[-2])  # right and bottom
    return torch.nn.functional.pad(x, pad, value=0.0), torch.nn.functional.pad(y, pad, value=IGNORE)
