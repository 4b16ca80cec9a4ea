"""Datasets by name. Each yields (image, label) pairs: a PIL RGB image or a uint8 [H, W, 3]
array (the world's, which skips two conversions a sample), and label -1 when unlabelled."""

from __future__ import annotations

from mimbench.registry import Registry

DATASETS = Registry("dataset", group="mimbench.datasets")


def build_dataset(name: str, **options):
    """Build the dataset `name` with its options (as in the config's `data` section)."""
    return DATASETS.get(name).factory(**options)


# Built-ins, imported when first used; plugins register through the entry point group.
for _name, _value in {"ade20k": "mimbench.data.ade20k:ADE20K", "folder": "mimbench.data.folder:FolderDataset",
                      "world": "mimbench.data.world:World"}.items():
    DATASETS.register_lazily(_name, _value)

__all__ = ["DATASETS", "build_dataset"]
