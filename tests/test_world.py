"""The synthetic world's splits: each a pure function of (seed, split, index), no scene shared."""

import numpy as np
import pytest

from mimbench.data.world import World
from mimbench.errors import DataError


def test_the_test_split_holds_ten_thousand_scenes_no_other_split_has():
    """A held-out test split for reporting (issue 29): 10,000 scenes by default, none of them
    equal to a val, train or pretrain scene at the same index (the splits draw from disjoint
    random streams), and the same scenes on every call."""
    test = World("test", image_size=32, cache=False)
    assert len(test) == 10_000
    others = [World(split, length=50, image_size=32, cache=False) for split in ("val", "train", "pretrain")]
    images = [test.scene(i).image for i in range(50)]
    for other in others:
        assert not any(np.array_equal(a, other.scene(i).image) for i, a in enumerate(images))
    again = World("test", length=50, image_size=32, cache=False)
    assert all(np.array_equal(a, again.scene(i).image) for i, a in enumerate(images))
    labels = [test.scene(i).label for i in range(200)]
    assert len(set(labels)) == 8  # every class appears


def test_an_unknown_split_gets_one_sentence():
    with pytest.raises(DataError, match="world split must be one of teacher, pretrain, train, val, test"):
        World("tset", cache=False)
