"""Wall time of each evaluation on the `tiny` preset (random-init student, the world's eval
splits), one round each: `pytest tests/benchmarks/test_eval_speed.py --benchmark-enable
--benchmark-only`. Each probe includes feature extraction (its cache is per test)."""

import pytest

from mimbench import config as cfg
from mimbench.evals.backbone import load_backbone
from mimbench.model_source import ModelSource
from mimbench.evals.features import student_features
from mimbench.evals.finetune import finetune
from mimbench.evals.knn import knn_probe
from mimbench.evals.linear_probe import linear_probe
from mimbench.evals.seg_probe import segmentation_probe
from mimbench.evals.segmentation import segmentation


@pytest.fixture(scope="module")
def tiny():
    return cfg.resolve("tiny", target="pixels")


@pytest.mark.parametrize("name", ["linear", "knn", "seg_linear", "finetune", "segmentation"])
def test_tiny_evaluation(benchmark, tiny, tmp_path, name):
    def evaluate():
        encoder, source, _ = load_backbone(ModelSource.parse("timm:random"), tiny)
        if name in ("linear", "knn"):
            probe = linear_probe if name == "linear" else knn_probe
            return probe(student_features(encoder, tiny, source), tiny, tmp_path / "features")
        if name == "seg_linear":
            return segmentation_probe(student_features(encoder, tiny, source), tiny)
        if name == "finetune":
            return finetune(encoder, tiny, source)
        return segmentation(encoder, tiny, source)

    result = benchmark.pedantic(evaluate, rounds=1, iterations=1)
    benchmark.extra_info["steps"] = result["card"].get("steps")
    benchmark.extra_info["metric"] = next(v for v in result.values() if isinstance(v, float))
