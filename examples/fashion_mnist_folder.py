"""Fashion-MNIST as an ImageFolder: OUT/train/<class>/*.png (the 60,000 training images) and
OUT/val/<class>/*.png (the 10,000 test images), from the IDX files of Debian's
dataset-fashion-mnist package (`apt install dataset-fashion-mnist`) or any folder holding them.

    python examples/fashion_mnist_folder.py data/fashion-mnist [--per-class 600] [--source DIR]
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
           "ankle-boot")
SPLITS = {"train": "train", "val": "t10k"}  # folder name -> IDX file prefix


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped): uint8 images [N, 28, 28] or labels [N]."""
    data = gzip.decompress(path.read_bytes())
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def write_split(source: Path, prefix: str, out: Path, per_class: int | None) -> int:
    images = read_idx(source / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")
    written = 0
    for label, name in enumerate(CLASSES):
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(labels == label)[:per_class]:  # in file order
            Image.fromarray(images[i]).convert("RGB").save(out / name / f"{i:05d}.png")
            written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=None,
                        help="The first N images of each class in each split (default: all).")
    parser.add_argument("--source", type=Path, default=SOURCE, help="The folder of IDX files.")
    args = parser.parse_args()
    if not (args.source / "train-images-idx3-ubyte.gz").exists():
        raise SystemExit(f"no Fashion-MNIST IDX files in {args.source}; install Debian's "
                         f"dataset-fashion-mnist or pass --source.")
    for split, prefix in SPLITS.items():
        count = write_split(args.source, prefix, args.out / split, args.per_class)
        print(f"{args.out / split}: {count} images in {len(CLASSES)} classes")


if __name__ == "__main__":
    main()
