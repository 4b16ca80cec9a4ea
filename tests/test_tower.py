"""A target's own network as the trained evaluations' reference backbone (evals.tower)."""

import torch

from mimbench import config as cfg
from mimbench.data.views import resize_all, uint8_tensor
from mimbench.targets.source import build_target_for
from mimbench.evals.data import eval_dataset, student_batch
from mimbench.evals.segmentation import segmentation
from mimbench.evals.tower import target_tower


def stage_and_feature(config, provider, stage, count):
    """The tower's `stage` (0-based) on `count` val images normalised as the student's, and
    `provider` on the same images as its own views; both [count, h*w, C]."""
    tower, _ = target_tower(config)
    tower.eval()
    images = [image for image, _ in (eval_dataset(config, "val")[i] for i in range(count))]
    size = provider.spec.input_size
    with torch.no_grad():
        fmap = tower.stages(student_batch(images, size))[stage]  # [count, C, h, w]
    views = resize_all([uint8_tensor(im) for im in images], size, "bicubic")  # [count, S, S, 3]
    return fmap.flatten(2).transpose(1, 2), provider(views.permute(0, 3, 1, 2).float() / 255)


def test_tower_stage_2_is_the_clip_targets_feature():
    """Fed images normalised as the student's, the tower's stage 2 is what the clip target
    (layer 2, its own normalisation) regresses: the conversion and the stage order are right."""
    config = cfg.resolve("smoke", target="clip")
    provider = build_target_for(config)
    stage2, expected = stage_and_feature(config, provider, 1, 6)
    assert torch.allclose(stage2, expected, atol=1e-4)
    tower, description = target_tower(config)
    assert tower.input_size == provider.spec.input_size and "own network" in description


def test_segmentation_trains_the_towers_stages():
    config = cfg.resolve("smoke", target="clip")
    tower, _ = target_tower(config)
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    result = segmentation(tower, config, "target:clip")
    assert result["card"]["features"] == "stages 1-4"
    assert result["card"]["encoder_input"] == tower.input_size
    changed = {k.split(".")[1] for k, v in tower.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"0", "1", "2", "3", "4"}  # stem and every stage trained


def test_tower_of_a_resampled_target_layer():
    """On the smoke teacher target.layer=1 gives an 8x8 grid, resampled to the student's 4x4:
    the tower is still found behind the resampling, and its stage 1 is that target's own
    (unresampled) feature."""
    config = cfg.resolve("smoke", target="clip", overrides=("target.layer=1",))
    provider = build_target_for(config)
    assert provider.provider.spec.grid == (8, 8) and provider.spec.grid == config.student.grid
    stage1, expected = stage_and_feature(config, provider.provider, 0, 4)  # [4, 64, C] each
    assert torch.allclose(stage1, expected, atol=1e-4)
