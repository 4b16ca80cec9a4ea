"""The pre-training data path with JPEG decoding on the training device (data.decode=device).

One GPU at the paper recipe's step needs 10-18 CPU cores of PIL decoding, cropping and colour
jitter (docs/performance.md); a node has 12-16 per GPU. Here the DataLoader workers only read
each file's bytes and draw the sample's random parameters, in the CPU path's order from the
same (seed, epoch, index) generator: colour-jitter factors, flip, crop box, mask. The device
then decodes the batch (torchvision.io.decode_jpeg), jitters, crops, flips and resizes it.
Masks and parameters equal the CPU path's; pixels differ by the resize and jitter kernels
(torch's instead of PIL's), within a few levels (tests/test_views.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from mimbench.data.views import MIMDataset, MIMViews, _uniform, crop_box, sample_generator
from mimbench.errors import ConfigError, DataError

GRAY = (0.299, 0.587, 0.114)  # PIL's (ITU-R 601-2) luma weights, as its ImageEnhance uses


class EncodedImages(MIMDataset):
    """(epoch, index) -> the JPEG bytes of a folder dataset's image and its parameters."""

    def __init__(self, images, views: MIMViews, seed: int):
        if not hasattr(images, "files"):
            raise ConfigError("data.decode=device reads JPEG files: use it with data.name=folder.")
        super().__init__(images, views, seed)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        path = self.images.files[index]
        with Image.open(path) as im:  # the header only: no decoding
            width, height = im.size
        g = sample_generator(self.seed, epoch, index)
        v = self.views
        factors = [_uniform(g, max(0.0, 1 - v.jitter), 1 + v.jitter) for _ in range(3)] if v.jitter else []
        flip = bool(v.hflip and torch.rand((), generator=g).item() < 0.5)
        top, left, h, w = crop_box(width, height, v.crop_scale, g)  # in the flipped image
        if flip:
            left = width - left - w  # the same pixels, found in the unflipped image
        data = read_file(str(path))
        if data[:2].tolist() != [0xFF, 0xD8]:
            raise DataError(f"data.decode=device decodes JPEG files only, and '{path}' is not "
                            f"one; use data.decode=workers for this folder.")
        return {"jpeg": data, "box": (top, left, h, w), "flip": flip,
                "jitter": factors, "mask": v.masker(g).flatten(), "index": index}


def collate(items: list[dict]) -> dict:
    """The batch's bytes in one tensor with their lengths (one tensor crosses from a worker in
    one piece of shared memory; one tensor per file ran out of file descriptors), parameters
    as lists, masks and indices stacked."""
    return {"jpeg": torch.cat([i["jpeg"] for i in items]),
            "lengths": [len(i["jpeg"]) for i in items], "box": [i["box"] for i in items],
            "flip": [i["flip"] for i in items], "jitter": [i["jitter"] for i in items],
            "mask": torch.stack([i["mask"] for i in items]),
            "index": torch.tensor([i["index"] for i in items])}


def _gray(x: torch.Tensor) -> torch.Tensor:
    """[3, H, W] float in 0..255 -> [1, H, W] luma."""
    return sum(w * c for w, c in zip(GRAY, x)).unsqueeze(0)


def jitter(x: torch.Tensor, factors: list[float]) -> torch.Tensor:
    """PIL's ImageEnhance brightness, contrast (against the whole image's mean luma) and
    saturation, in that order, on a float [3, H, W] image in 0..255."""
    brightness, contrast, saturation = factors
    x = (x * brightness).clamp(0, 255)
    mean = _gray(x).mean().round()
    x = (mean + contrast * (x - mean)).clamp(0, 255)
    gray = _gray(x)
    return (gray + saturation * (x - gray)).clamp(0, 255)


def _resize(crops: list[torch.Tensor], size: int, interpolation: str) -> torch.Tensor:
    """float [3, h, w] crops -> uint8 [B, size, size, 3] (antialiased, as the CPU path)."""
    mode = "bicubic" if interpolation not in ("bilinear", "bicubic") else interpolation
    out = [F.interpolate(c[None], size=(size, size), mode=mode, antialias=True) for c in crops]
    return torch.cat(out).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def decode_batch(batch: dict, views: MIMViews, device: torch.device) -> dict:
    """A collated batch of JPEG bytes -> the CPU path's batch ({"student": [B, S, S, 3] and
    "teacher": [B, T, T, 3] uint8, "mask", "index"}), made on `device`."""
    files = list(torch.split(batch["jpeg"], batch["lengths"]))
    images = decode_jpeg(files, mode=ImageReadMode.RGB, device=device)  # each [3, H, W]
    crops = []
    for image, (top, left, h, w), flip, factors in zip(images, batch["box"], batch["flip"],
                                                       batch["jitter"]):
        x = image.float()
        if factors:
            x = jitter(x, factors)
        x = x[:, top:top + h, left:left + w]
        crops.append(x.flip(-1) if flip else x)
    student = _resize(crops, views.student_size, "bicubic")
    same = (views.teacher_size, views.teacher_interpolation) == (views.student_size, "bicubic")
    teacher = student if same else _resize(crops, views.teacher_size, views.teacher_interpolation)
    return {"student": student, "teacher": teacher, "mask": batch["mask"], "index": batch["index"]}


def pipeline(decode: str, images, views: MIMViews, seed: int):
    """(dataset, collate, prepare) of the pre-training data path: PIL in the DataLoader
    workers ("workers"), or bytes from the workers and decoding on the device ("device");
    prepare(batch, device) turns a collated batch into the engine's batch."""
    from mimbench.data.views import MIMDataset

    if decode == "device":
        return EncodedImages(images, views, seed), collate, lambda b, device: decode_batch(b, views, device)
    return MIMDataset(images, views, seed), views.collate, lambda b, device: b
