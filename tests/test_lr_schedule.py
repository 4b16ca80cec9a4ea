import math

import pytest

from mimbench.lr_schedule import lr_at


def test_warms_up_linearly_then_follows_a_cosine_to_the_floor():
    lrs = [lr_at(s, 100, 10, 2.0, floor=0.5) for s in range(101)]
    assert lrs[:10] == pytest.approx([2.0 * (s + 1) / 10 for s in range(10)])
    assert lrs[10] == pytest.approx(2.0)
    # halfway through the decay the cosine is at its mean of peak and floor
    assert lrs[55] == pytest.approx(1.25)
    assert lrs[100] == pytest.approx(0.5)
    assert lrs[30] == pytest.approx(0.5 + 1.5 * 0.5 * (1 + math.cos(math.pi * 20 / 90)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_polynomial_decay_as_for_segmentation():
    # BEiT's segmentation: linear warmup, then poly decay with power 1 is a straight line to 0
    lrs = [lr_at(s, 50, 10, 1.0, decay="poly") for s in range(51)]
    assert lrs[10:] == pytest.approx([1 - k / 40 for k in range(41)])
    squared = lr_at(30, 50, 10, 1.0, decay="poly", power=2.0)
    assert squared == pytest.approx(0.5 ** 2)


def test_no_warmup_starts_at_the_peak():
    assert lr_at(0, 10, 0, 3.0) == 3.0


def test_an_unknown_decay_is_refused_not_read_as_cosine():
    with pytest.raises(ValueError, match="unknown learning-rate decay 'linear'"):
        lr_at(20, 50, 10, 1.0, decay="linear")
