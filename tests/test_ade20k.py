import numpy as np
import pytest
from PIL import Image

from mimbench.data import build_dataset
from mimbench.errors import DataError


def make_ade(root, split="validation", n=3, size=(12, 8)):
    rng = np.random.default_rng(0)
    (root / "images" / split).mkdir(parents=True)
    (root / "annotations" / split).mkdir(parents=True)
    labels = []
    for i in range(n):
        name = f"ADE_val_{i:08d}"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
            root / "images" / split / f"{name}.jpg")
        label = rng.integers(0, 151, (size[1], size[0]), dtype=np.uint8)
        label[0, :3] = [0, 1, 150]
        Image.fromarray(label).save(root / "annotations" / split / f"{name}.png")
        labels.append(label)
    return labels


def test_reduce_zero_label_gives_150_classes(tmp_path):
    raw = make_ade(tmp_path)
    data = build_dataset("ade20k", root=str(tmp_path), split="validation")
    assert len(data) == 3 and data.num_classes == 150
    image, label = data[1]
    assert image.size == (12, 8) and label.shape == (8, 12)
    assert list(label[0, :3]) == [255, 0, 149]  # 0 -> ignored, 1 -> 0, 150 -> 149
    expected = np.where(raw[1] == 0, 255, raw[1].astype(np.int64) - 1)
    assert np.array_equal(label, expected)
    assert set(np.unique(label)) <= set(range(150)) | {255}


def test_missing_annotation_is_named(tmp_path):
    make_ade(tmp_path)
    (tmp_path / "annotations" / "validation" / "ADE_val_00000001.png").unlink()
    with pytest.raises(DataError, match="ADE_val_00000001.jpg' has no annotation"):
        build_dataset("ade20k", root=str(tmp_path), split="validation")
    with pytest.raises(DataError, match="training"):
        build_dataset("ade20k", root=str(tmp_path), split="training")
