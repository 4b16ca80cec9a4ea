"""A feature target on another grid than the student's is mapped onto it by the core."""


import numpy as np
import pytest
import torch

from mimbench import config as cfg
from mimbench.targets.source import build_target_for
from mimbench.errors import ConfigError
from tests.test_targets import CLIP_MEAN, CLIP_STD, save_resnet_clip



@pytest.fixture(scope="module")
def resnet_clip(tmp_path_factory):
    """A tiny ResNet-tower CLIP (the tiny teacher's shape) with random weights in a folder."""
    folder = tmp_path_factory.mktemp("clip")
    return save_resnet_clip(folder), folder


def stage_map(model, view, stage):
    with torch.no_grad():
        return model.visual.forward_intermediates((view - CLIP_MEAN) / CLIP_STD, indices=[stage],
                                                  intermediates_only=True)["image_intermediates"][0]


def target_for(folder, layer):
    config = cfg.resolve("tiny", target="clip", overrides=(
        f"target.model=local-dir:{folder}", "target.weights=null", f"target.layer={layer}"))
    return build_target_for(config)  # the tiny student: 8x8 patches


def bilinear_2x(a: np.ndarray) -> np.ndarray:
    """Upsample the last two axes by 2 with half-pixel centres and edge clamping, by hand:
    an output cell at a quarter of the way between two input cells weighs them 3/4, 1/4."""
    for axis in (-2, -1):
        n = a.shape[axis]
        take = lambda idx: np.take(a, np.clip(idx, 0, n - 1), axis=axis)
        k = np.arange(n)
        even = 0.75 * take(k) + 0.25 * take(k - 1)
        odd = 0.75 * take(k) + 0.25 * take(k + 1)
        a = np.stack([even, odd], axis=axis).reshape(*a.shape[:axis % a.ndim], 2 * n,
                                                     *a.shape[axis % a.ndim + 1:])
    return a


def test_a_finer_stage_is_averaged_over_each_student_patch(resnet_clip):
    model, folder = resnet_clip
    target = target_for(folder, 1)  # stage 1: 16x16 at 64 px
    assert target.spec.grid == (8, 8)
    view = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fmap = stage_map(model, view, 1).numpy()  # [2, C, 16, 16]
    b, c = fmap.shape[:2]
    expected = fmap.reshape(b, c, 8, 2, 8, 2).mean((3, 5)).reshape(b, c, 64).transpose(0, 2, 1)
    np.testing.assert_allclose(target(view).numpy(), expected, atol=1e-5)


def test_a_coarser_stage_is_interpolated_bilinearly(resnet_clip):
    model, folder = resnet_clip
    target = target_for(folder, 3)  # stage 3: 4x4 at 64 px
    assert target.spec.grid == (8, 8) and target.spec.dim == 256
    view = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    fmap = stage_map(model, view, 3).numpy()  # [2, 256, 4, 4]
    expected = bilinear_2x(fmap).reshape(2, 256, 64).transpose(0, 2, 1)
    np.testing.assert_allclose(target(view).numpy(), expected, atol=1e-5)


def test_a_grid_that_does_not_tile_the_student_is_refused(resnet_clip):
    _, folder = resnet_clip
    config = cfg.resolve("tiny", target="clip", overrides=(
        f"target.model=local-dir:{folder}", "target.weights=null", "target.layer=2",
        "target.input_size=48"))  # stage 2: 6x6 against 8x8 patches
    with pytest.raises(ConfigError, match="6x6 feature grid.*does not tile"):
        build_target_for(config)


def test_token_targets_on_another_grid_are_refused():
    from mimbench.target_grid import check_grid
    from mimbench.targets.base import TargetSpec

    with pytest.raises(ConfigError, match="token ids cannot be resampled"):
        check_grid(TargetSpec("tokens", 512, (14, 14), 112, loss="ce"), (8, 8), "dvae")
