"""The linear segmentation probe on frozen patch features (evals.seg_probe)."""

import numpy as np
import torch
import torch.nn.functional as F

from mimbench import config as cfg
from mimbench.evals.features import FrozenModel
from mimbench.evals.seg_probe import patch_labels, segmentation_probe
from mimbench.evals.metrics import segmentation_metrics
from mimbench.evals.segmentation import IGNORE, segmentation_data

GRID = (4, 4)


def test_patch_labels_are_the_majority_of_each_patchs_pixels():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (2, 8, 8), generator=g)
    labels[0, :2, :2] = IGNORE  # a patch made only of ignored pixels
    got = patch_labels(labels, GRID, 3)
    for b in range(2):
        for i in range(4):
            for j in range(4):
                pixels = labels[b, 2 * i:2 * i + 2, 2 * j:2 * j + 2].flatten().tolist()
                counts = [pixels.count(c) for c in (0, 1, 2, IGNORE)]
                best = max(range(4), key=lambda k: (counts[k], -k))  # ties: the lower class
                assert got[b, i, j] == [0, 1, 2, IGNORE][best]


def _model(features):
    """A FrozenModel whose patch map is `features(label maps)`, reading the world's own labels."""
    def patch_map(images):
        masks = torch.stack([torch.from_numpy(np.asarray(lookup[np.asarray(im).tobytes()])) for im in images]).long()
        return features(masks)

    return FrozenModel(None, None, "test", "test", "test", patch_map, tokens=None)


lookup = {}


def _index_images(config):
    for split in ("train", "val"):
        data = segmentation_data(config, split)
        for i in range(len(data)):
            image, mask = data[i]
            lookup[np.asarray(image).tobytes()] = mask  # an image's own pixels find its labels


def test_oracle_features_segment_and_noise_does_not():
    """Patch features that are the one-hot of each patch's majority class: the probe recovers
    the objects (up to patch quantisation); features of noise: near nothing."""
    config = cfg.resolve("smoke", overrides=("linear.max_iter=300",))
    _index_images(config)
    oracle = _model(lambda masks: F.one_hot(patch_labels(masks, GRID, 9), 9).permute(0, 3, 1, 2).float())
    noise = _model(lambda masks: torch.randn(len(masks), 9, *GRID, generator=torch.Generator().manual_seed(len(masks))))
    good = segmentation_probe(oracle, config)
    bad = segmentation_probe(noise, config)
    # what reading each patch's class off perfectly gives at this grid, computed directly
    val = segmentation_data(config, "val")
    masks = torch.stack([torch.from_numpy(np.asarray(val[i][1])).long() for i in range(len(val))])
    onehot = F.one_hot(patch_labels(masks, GRID, 9), 9).permute(0, 3, 1, 2).float()
    upsampled = F.interpolate(onehot, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    ceiling = segmentation_metrics(list(upsampled.argmax(1).numpy()), list(masks.numpy()), 9, IGNORE, 0)
    # upsampled logits keep the regression's class biases, which favour the frequent background
    # at object borders: most of the ceiling, not all of it
    assert good["mIoU_objects"] > 0.6 * ceiling["mIoU_objects"] and good["mIoU"] > 0.6 * ceiling["mIoU"]
    assert bad["mIoU_objects"] < 5 < ceiling["mIoU_objects"] - 20
    assert good["card"]["headline"] == "mIoU_objects" and good["card"]["train_patches"] > 0
