"""Datasets by name. Each yields (image, label) pairs: a PIL RGB image or a uint8 [H, W, 3]
array (the world's, which skips two conversions a sample), and label -1 when unlabelled."""

from __future__ import annotations

import inspect

from mimbench.errors import ConfigError
from mimbench.registry import Registry

DATASETS = Registry("dataset", group="mimbench.datasets")


def build_dataset(name: str, **options):
    """Build the dataset `name` with its options (as in the config's `data` section)."""
    return DATASETS.get(name).factory(**options)


# Built-ins, imported when first used; plugins register through the entry point group.
for _name, _value in {"ade20k": "mimbench.data.ade20k:ADE20K", "folder": "mimbench.data.folder:FolderDataset",
                      "world": "mimbench.data.world:World"}.items():
    DATASETS.register_lazily(_name, _value)



def check_label_maps(config) -> None:
    """Segmentation reads ADE20K or an evaluation dataset that can give label maps."""
    if config.segmentation.dataset == "ade20k":
        return
    factory = DATASETS.get(config.eval_data.name).factory
    if "labels" not in inspect.signature(factory).parameters:
        raise ConfigError(f"segmentation needs label maps, which dataset '{config.eval_data.name}' "
                          f"does not have; drop segmentation and seg_linear from run.evals, or "
                          f"use the world or segmentation.dataset=ade20k with segmentation.root.")


__all__ = ["DATASETS", "build_dataset", "check_label_maps"]
