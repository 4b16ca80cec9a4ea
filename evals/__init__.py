"""Evaluations of a pre-trained student: linear probe, fine-tuning, segmentation.

Each evaluation only reads a backbone and writes its result with a protocol card into
results.json under evals.<name>.
"""

from __future__ import annotations

import json
from pathlib import Path

from mimbench.errors import ConfigError

RESULT_NAMES = {"linear": "linear_probe", "finetune": "finetune", "segmentation": "segmentation"}


def run_evals(names, config, source: str, out: Path, progress=None, preset: str | None = None) -> dict:
    """Run evaluations `names` on `source` (run dir, checkpoint or timm:<name>); merge their
    results into out/results.json and return that file's content."""
    from mimbench.engine import RunDir
    from mimbench.evals.backbone import load_backbone
    from mimbench.evals.finetune import finetune
    from mimbench.evals.linear_probe import linear_probe
    from mimbench.evals.segmentation import segmentation

    unknown = [n for n in names if n not in RESULT_NAMES]
    if unknown:
        raise ConfigError(f"unknown evaluation '{unknown[0]}'; available: {', '.join(RESULT_NAMES)}.")
    run = RunDir(out)
    results = json.loads(run.results.read_text()) if run.results.exists() else {}
    for name in names:
        encoder, description = load_backbone(source, config)  # fresh: fine-tuning changes it
        if name == "linear":
            result = linear_probe(encoder, config, description, Path(out) / "features", progress, preset)
        elif name == "finetune":
            result = finetune(encoder, config, description, progress, preset)
        else:
            result = segmentation(encoder, config, description, progress, preset)
        results.setdefault("evals", {})[RESULT_NAMES[name]] = result
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_results(results)  # each finished evaluation is kept even if a later one fails
    return results
