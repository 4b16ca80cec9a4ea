"""Blockwise masking against an independent transcription of BEiT's generator."""

import math
import random

import numpy as np
import pytest
import torch

from mimbench.masking import BlockMasking, RandomMasking


def beit_reference(rng: random.Random, height=14, width=14, target=75, min_area=16, min_aspect=0.3):
    """BEiT's MaskingGenerator as docs/protocols.md describes it; returns (mask, number of blocks)."""
    mask = np.zeros((height, width), dtype=int)
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    count = blocks = 0
    while count < target:
        remaining = target - count
        delta = 0
        for _ in range(10):
            area = rng.uniform(min_area, remaining)
            aspect = math.exp(rng.uniform(*log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if w < width and h < height:
                top = rng.randint(0, height - h)
                left = rng.randint(0, width - w)
                already = mask[top:top + h, left:left + w].sum()
                if 0 < h * w - already <= remaining:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
                if delta > 0:
                    break
        if delta == 0:
            break
        count += delta
        blocks += 1
    return mask, blocks


def test_block_masking_matches_beit_statistics():
    n = 3000
    ref_rng = random.Random(1)
    ref = [beit_reference(ref_rng) for _ in range(n)]
    ref_masks = np.stack([m for m, _ in ref])
    ref_blocks = np.array([b for _, b in ref])

    masker = BlockMasking(grid=(14, 14), num_masked=75, min_block=16, min_aspect=0.3)
    g = torch.Generator().manual_seed(2)
    ours = [masker(g).numpy() for _ in range(n)]
    our_masks = np.stack(ours)
    blocks_rng = random.Random(3)
    our_blocks = np.array([len(masker.blocks(blocks_rng)) for _ in range(n)])

    ref_counts, our_counts = ref_masks.sum((1, 2)), our_masks.sum((1, 2))
    assert our_counts.max() <= 75
    assert abs(our_counts.mean() - ref_counts.mean()) < 0.5
    assert abs((our_counts == 75).mean() - (ref_counts == 75).mean()) < 0.04
    # per-position frequency: binomial noise at n=3000 has std ~0.009 per cell for each side
    assert np.abs(our_masks.mean(0) - ref_masks.mean(0)).max() < 0.05
    assert abs(our_blocks.mean() - ref_blocks.mean()) < 0.1
    ours_hist = np.bincount(our_blocks, minlength=20)[:20] / n
    ref_hist = np.bincount(ref_blocks, minlength=20)[:20] / n
    assert np.abs(ours_hist - ref_hist).max() < 0.04


@pytest.mark.parametrize("grid, count, min_block", [((14, 14), 75, 16), ((8, 8), 29, 4)])
def test_block_masking_draws_exactly_beits_masks_from_the_same_random_stream(grid, count, min_block):
    masker = BlockMasking(grid=grid, num_masked=count, min_block=min_block)
    for seed in range(200):
        ours, _ = masker._sample(random.Random(seed))
        reference, _ = beit_reference(random.Random(seed), *grid, count, min_block)
        assert np.array_equal(np.array(ours, dtype=int), reference), seed


def test_block_masking_is_reproducible_and_bool():
    masker = BlockMasking()
    a = masker(torch.Generator().manual_seed(7))
    b = masker(torch.Generator().manual_seed(7))
    assert a.dtype == torch.bool and a.shape == (14, 14)
    assert torch.equal(a, b)
    assert not torch.equal(a, masker(torch.Generator().manual_seed(8)))


def test_block_masking_small_remainder_still_places_blocks():
    # 5 of 64 patches with a minimum block of 16: the area is drawn between 16 and 5, as BEiT does
    masker = BlockMasking(grid=(8, 8), num_masked=5, min_block=16)
    counts = np.array([int(masker(torch.Generator().manual_seed(s)).sum()) for s in range(2000)])
    rng = random.Random(0)
    ref = np.array([beit_reference(rng, 8, 8, 5, 16)[0].sum() for _ in range(2000)])
    assert counts.max() <= 5 and counts.mean() > 0
    assert abs(counts.mean() - ref.mean()) < 0.15


@pytest.mark.parametrize("count", [0, 29, 64])
def test_random_masking_masks_exactly(count):
    masker = RandomMasking(grid=(8, 8), num_masked=count)
    g = torch.Generator().manual_seed(0)
    masks = torch.stack([masker(g) for _ in range(200)])
    assert (masks.flatten(1).sum(1) == count).all()
    if 0 < count < 64:  # uniform: every position masked with frequency count/64
        freq = masks.float().mean(0)
        assert (freq - count / 64).abs().max() < 0.15


def test_masking_rejects_impossible_counts():
    with pytest.raises(ValueError):
        BlockMasking(grid=(4, 4), num_masked=17)
    with pytest.raises(ValueError):
        RandomMasking(grid=(4, 4), num_masked=-1)


def test_block_masking_for_mae_masks_exactly_the_count():
    """Blockwise masks may stop short of the count; for the mae style random patches top them
    up, so every mask of a batch leaves the same number of patches visible."""
    loose = BlockMasking((8, 8), 48, min_block=4)
    exact = BlockMasking((8, 8), 48, min_block=4, exact=True)
    counts = [int(loose(torch.Generator().manual_seed(s)).sum()) for s in range(200)]
    assert min(counts) < 48  # the short masks this guards against occur
    for s in range(200):
        mask = exact(torch.Generator().manual_seed(s))
        assert int(mask.sum()) == 48
        assert (mask | ~loose(torch.Generator().manual_seed(s))).all()  # the blocks are kept
