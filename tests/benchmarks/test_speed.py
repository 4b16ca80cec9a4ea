"""Speed, not correctness: run with `pytest tests/benchmarks --benchmark-enable --benchmark-only`.

Each benchmark records what it measures in extra_info so the figures can be compared: the
cost of masks and data against the pre-training step they feed.
"""

import pytest
import torch

from mimbench import config as cfg
from mimbench.data.views import MIMViews, sample_generator
from mimbench.data.world import World
from mimbench.masking import BlockMasking, build_masking
from mimbench.optim import adamw
from mimbench.student import Student
from mimbench.targets.pixels import PixelTarget


def test_block_masks_for_a_2048_image_batch(benchmark):
    """BEiT's setting: 75 of 196 patches, minimum block 16."""
    masker = BlockMasking(grid=(14, 14), num_masked=75, min_block=16)
    g = torch.Generator().manual_seed(0)
    masks = benchmark(lambda: torch.stack([masker(g) for _ in range(2048)]))
    assert masks.shape == (2048, 14, 14)


@pytest.fixture(scope="module")
def tiny():
    return cfg.resolve("tiny", target="pixels")


def test_world_batch_of_views(benchmark, tiny):
    """One tiny-preset batch of (student view, teacher view, mask) from the cached world."""
    world = World("pretrain", length=2048)
    views = MIMViews(tiny.student.img_size, 64, "bicubic", build_masking(tiny.mask, tiny.student))
    batch = tiny.optim.batch_size

    def make():
        return views.collate([views(world[i][0], sample_generator(0, 0, i)) for i in range(batch)])

    views_batch = benchmark(make)
    assert views_batch["student"].shape[0] == batch
    benchmark.extra_info["images_per_s"] = batch / benchmark.stats["mean"]


def test_tiny_pretraining_step(benchmark, tiny):
    """Student forward + backward + AdamW on one tiny-preset batch (pixel target)."""
    target = PixelTarget(tiny.student.img_size, tiny.student.patch_size)
    student = Student(tiny.student, target.spec)
    optimizer = adamw(student.parameters(), lr=1e-3)
    b = tiny.optim.batch_size
    images = torch.rand(b, 3, tiny.student.img_size, tiny.student.img_size)
    mask = torch.rand(b, 64) < 0.45
    goal = target(images).clone()

    def step():
        loss = (student(images, mask)[mask] - goal[mask]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    benchmark(step)
    benchmark.extra_info["images_per_s"] = b / benchmark.stats["mean"]


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_adamw_step(benchmark, preset, fused):
    """The optimizer step alone for the preset's student (ViT-B/16 on paper): torch's default
    foreach AdamW against the fused one that mimbench.optim.adamw picks on CPU and CUDA."""
    config = cfg.resolve(preset, target="pixels")
    target = PixelTarget(config.student.img_size, config.student.patch_size)
    student = Student(config.student, target.spec)
    for p in student.parameters():
        p.grad = torch.randn_like(p)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, fused=fused, foreach=not fused)
    benchmark(optimizer.step)
    benchmark.extra_info["parameters"] = sum(p.numel() for p in student.parameters())
