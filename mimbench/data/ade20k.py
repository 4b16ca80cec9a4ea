"""ADE20K (ADEChallengeData2016) for semantic segmentation, as BEiT/mmseg read it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mimbench.errors import DataError

NUM_CLASSES = 150


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """0 (other) -> 255 (ignored); classes 1..150 -> 0..149."""
    label = label.astype(np.int64)
    out = label - 1
    out[label == 0] = 255
    out[label == 255] = 255
    return out


class ADE20K:
    """root/images/<split>/*.jpg with root/annotations/<split>/*.png of the same name."""

    num_classes = NUM_CLASSES

    def __init__(self, root: str | None = None, split: str = "training", reduce_zero: bool = True):
        if root is None:
            raise DataError("ADE20K needs its folder: pass --set segmentation.root=/path/to/ADEChallengeData2016.")
        if split not in ("training", "validation"):
            raise DataError(f"ADE20K split must be 'training' or 'validation', not {split!r}.")
        self.root = Path(root).expanduser()
        images_dir = self.root / "images" / split
        labels_dir = self.root / "annotations" / split
        for folder in (images_dir, labels_dir):
            if not folder.is_dir():
                raise DataError(f"ADE20K folder '{folder}' is missing; expected the official "
                                f"ADEChallengeData2016/{{images,annotations}}/{{training,validation}} layout.")
        self.images = sorted(images_dir.glob("*.jpg"))
        if not self.images:
            raise DataError(f"'{images_dir}' holds no .jpg images.")
        self.labels = [labels_dir / f"{p.stem}.png" for p in self.images]
        for image, label in zip(self.images, self.labels):
            if not label.exists():
                raise DataError(f"image '{image}' has no annotation '{label}'.")
        extra = {p.stem for p in labels_dir.glob("*.png")} - {p.stem for p in self.images}
        if extra:
            raise DataError(f"annotation '{labels_dir / (sorted(extra)[0] + '.png')}' has no image.")
        self.reduce_zero = reduce_zero

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        with Image.open(self.images[i]) as im:
            image = im.convert("RGB")
        with Image.open(self.labels[i]) as lab:
            label = np.asarray(lab)
        if label.shape != (image.height, image.width):
            raise DataError(f"annotation '{self.labels[i]}' is {label.shape[1]}x{label.shape[0]} but its "
                            f"image is {image.width}x{image.height}.")
        return image, reduce_zero_label(label) if self.reduce_zero else label.astype(np.int64)
