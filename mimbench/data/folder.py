"""Images in a folder: ImageNet-style class sub-folders, or any (recursive) pile of images."""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mimbench.errors import DataError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm"}


class FolderDataset:
    """root/<class>/<image> gives labelled images (classes sorted by name); images anywhere
    else make the whole folder unlabelled (label -1).

    skip_corrupt: an unreadable image is replaced by the next readable one and counted,
    instead of stopping with an error that names the file.
    """

    def __init__(self, root: str | None = None, skip_corrupt: bool = False):
        if root is None:
            raise DataError("the folder dataset needs a path: pass --set data.root=/path/to/images.")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"data folder '{self.root}' does not exist; check data.root.")
        files = sorted(p for p in self.root.rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"data folder '{self.root}' holds no images "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))}).")
        self.files = files
        self.skip_corrupt = skip_corrupt
        self.skipped: set[Path] = set()
        labelled = all(len(p.relative_to(self.root).parts) == 2 for p in files)
        self.classes = sorted({p.parent.name for p in files}) if labelled else []
        index = {c: i for i, c in enumerate(self.classes)}
        self.labels = [index[p.parent.name] for p in files] if labelled else [-1] * len(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        for offset in range(len(self.files)):
            j = (i + offset) % len(self.files)
            try:
                return self._load(self.files[j]), self.labels[j]
            except (OSError, UnidentifiedImageError, ValueError) as e:
                if not self.skip_corrupt:
                    raise DataError(f"cannot read image '{self.files[j]}' ({e}); remove it or "
                                    f"set data.skip_corrupt=true to skip unreadable files.") from None
                if self.files[j] not in self.skipped:
                    self.skipped.add(self.files[j])
                    log.warning("skipping unreadable image %s (%d skipped so far)", self.files[j],
                                len(self.skipped))
        raise DataError(f"no image in '{self.root}' can be read.")

    @staticmethod
    def _load(path: Path) -> Image.Image:
        with Image.open(path) as im:
            return im.convert("RGB")
