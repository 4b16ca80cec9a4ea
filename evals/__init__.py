"""Evaluations of a pre-trained student: linear and k-NN probes, a linear segmentation probe,
fine-tuning, segmentation.

Each evaluation only reads a backbone and writes its result with a protocol card into
results.json under evals.<name>.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mimbench import config as cfg, run_lock
from mimbench.errors import ConfigError

RESULT_NAMES = {"linear": "linear_probe", "knn": "knn", "attentive": "attentive_probe", "finetune": "finetune",
                "segmentation": "segmentation", "seg_linear": "segmentation_linear"}


FROZEN_EVALS = ("linear", "knn", "attentive", "seg_linear")  # the protocols that read frozen features only


def run_evals(names, config, source, out: Path, progress=None, preset: str | None = None,
              partial: bool = False) -> dict:
    """Run evaluations `names` on `source` (a mimbench.model_source.ModelSource: a run, checkpoint,
    exported folder, timm:<name>, or target:<name> for a feature target's own network: frozen
    in the probes, trained by the others); merge
    their results into out/results.json and return that file's content. A run that stopped
    before its last step is refused unless `partial`; then each result says where it stopped."""
    from mimbench.run_dir import RunDir

    unknown = [n for n in names if n not in RESULT_NAMES]
    if unknown:
        raise ConfigError(f"unknown evaluation '{unknown[0]}'; available: {', '.join(RESULT_NAMES)}.")
    run = RunDir(out)
    with run_lock.released_after(run.path):
        run_lock.hold(run.path)  # before any work: a second writer is refused, not raced
        return _run(names, config, source, run, progress, preset, partial)


def _run(names, config, source, run, progress, preset, partial: bool) -> dict:
    from mimbench.trackers import Trackers

    out = run.path
    results = json.loads(run.results.read_text()) if run.results.exists() else {}
    trackers = Trackers(out, config.run.loggers, cfg.to_dict(config), "evaluate")
    try:
        _evaluate(names, config, source, run, progress, preset, results, trackers, partial)
    finally:
        trackers.close()
    return results


def _evaluate(names, config, source, run, progress, preset, results, trackers, partial: bool) -> None:
    from mimbench.evals.attentive import attentive_probe
    from mimbench.evals.backbone import load_backbone
    from mimbench.evals.features import student_features, target_features
    from mimbench.evals.finetune import finetune
    from mimbench.evals.knn import knn_probe
    from mimbench.evals.linear_probe import linear_probe, probe_blocks
    from mimbench.evals.seg_probe import segmentation_probe
    from mimbench.evals.segmentation import segmentation
    from mimbench.evals.tower import target_tower

    out = run.path
    step = results.get("pretrain", {}).get("steps", 0)  # evaluations sit at the run's last step
    is_target = source.kind == "target"
    if is_target and "linear" in names and config.linear.block == "all":
        raise ConfigError(f"linear.block=all probes each block of a student; {source} has no "
                          f"blocks to probe (drop linear.block, or evaluate a run).")
    frozen = target_features(config, source.text) if is_target and set(names) & set(FROZEN_EVALS) else None
    stopped = None
    for name in names:
        if name not in FROZEN_EVALS or not is_target:  # fresh: fine-tuning changes it
            if is_target:
                encoder, description = target_tower(config)
            else:
                encoder, description, stopped = load_backbone(source, config, partial)
        started = time.perf_counter()
        if name == "linear" and config.linear.block == "all":
            result = probe_blocks(encoder, config, description, Path(out) / "features", progress, preset)
        elif name in FROZEN_EVALS:
            model = frozen if is_target else student_features(encoder, config, description)
            if name == "seg_linear":
                result = segmentation_probe(model, config, progress, preset)
            elif name == "attentive":
                result = attentive_probe(model, config, progress, preset)
            else:
                probe = linear_probe if name == "linear" else knn_probe
                result = probe(model, config, Path(out) / "features", progress, preset)
        elif name == "finetune":
            result = finetune(encoder, config, description, progress, preset)
        else:
            result = segmentation(encoder, config, description, progress, preset)
        result["card"]["wall_time_s"] = time.perf_counter() - started
        per_image = result.pop("per_image", None)
        if per_image is not None:
            result["card"]["predictions"] = run.write_predictions(RESULT_NAMES[name], *per_image)
        if stopped:
            result["partial"] = stopped  # printed beside every number of this result
        results.setdefault("evals", {})[RESULT_NAMES[name]] = result
        run.write_results(results)  # each finished evaluation is kept even if a later one fails
        trackers.evaluation(RESULT_NAMES[name], result, step)
