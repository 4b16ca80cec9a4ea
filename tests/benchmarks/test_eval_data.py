"""The evaluations' data path: images/s of labelled 224-px views from a folder of ImageNet-sized
JPEGs through DataLoader workers (eval_data.num_workers). Run with
`pytest tests/benchmarks/test_eval_data.py --benchmark-enable --benchmark-only`."""

import numpy as np
import pytest
from PIL import Image

from mimbench.data.folder import FolderDataset
from mimbench.evals.data import CentreView, FinetuneAugmentation, labelled_batches

IMAGES = 128


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """ImageNet-like JPEGs: 500x375 and 375x500, smooth noise, quality 90 (~60 KB each)."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir()
        for i in range(IMAGES // 2):
            h, w = (375, 500) if i % 2 else (500, 375)
            coarse = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
            image.save(root / c / f"{i}.JPEG", quality=90)
    return FolderDataset(str(root))


@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("kind", ["centre", "finetune"])
def test_labelled_views_per_second(benchmark, jpegs, workers, kind):
    """Evaluation (resize 256 + centre 224) or fine-tuning (timm's RandAugment recipe) views."""
    view = CentreView(224, 0.875) if kind == "centre" else FinetuneAugmentation(224)

    def epoch():
        return sum(len(y) for _, y in labelled_batches(jpegs, 224, 32, view=view, workers=workers))

    seen = benchmark.pedantic(epoch, rounds=2, iterations=1, warmup_rounds=1)
    assert seen == IMAGES
    benchmark.extra_info["images_per_s"] = IMAGES / benchmark.stats.stats.median
    benchmark.extra_info["images_per_s_per_worker"] = IMAGES / benchmark.stats.stats.median / max(1, workers)
