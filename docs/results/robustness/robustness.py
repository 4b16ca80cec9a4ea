"""The world's robustness result (issue 31): the students of a finished `tiny` suite run
fine-tuned by the tiny recipe, tested on the test split and on two shifted worlds they never
saw in pre-training or fine-tuning (finetune.extra_val; the shipped `robustness` suite's
sets), the random-init floor alike. Paired gaps by seed with the suite report's statistics.
Evaluations already in evals/ are kept.

    python docs/results/robustness/robustness.py SUITE_FOLDER [SEED ...]
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from mimbench.suites import report

HERE = Path(__file__).resolve().parent
TARGETS = ["clip", "dvae", "pixels", "random"]
SETS = {"shifted_1": {"split": "test", "difficulty": 1}, "shifted_2": {"split": "test", "difficulty": 2}}
METRICS = ["finetune.top1", "finetune.top1_shifted_1", "finetune.top1_shifted_2"]
PAIRS = [("clip", "dvae"), ("clip", "pixels"), ("dvae", "pixels"), ("clip", "random")]


def evaluate(suite: Path, target: str, seed: int) -> dict:
    out = HERE / "evals" / f"{target}-s{seed}"
    results = out / "results.json"
    if not results.exists():
        model = (["--model", "timm:random", "--set", "eval_data.val={split: test}"] if target == "random"
                 else ["--checkpoint", str(suite / "runs" / f"{target}-s{seed}" / "checkpoint.pt")])
        subprocess.run(["mimbench", "eval", "finetune", *model, "--set", f"run.seed={seed}",
                        "--set", f"finetune.extra_val={json.dumps(SETS)}", "--out", str(out)], check=True)
    result = json.loads(results.read_text())["evals"]["finetune"]
    return {"target": target, "seed": seed, "point": {},
            "metrics": {f"finetune.{k}": v for k, v in result.items() if k.startswith("top1")}}


def main(suite: Path, seeds: list[int]) -> None:
    rows = [evaluate(suite, target, seed) for target in TARGETS for seed in seeds]
    print("| target | " + " | ".join(METRICS) + " |\n|---" * 1 + "|---" * len(METRICS) + "|")
    for target in TARGETS:
        values = [[r["metrics"][m] for r in rows if r["target"] == target] for m in METRICS]
        print(f"| {target} | " + " | ".join(f"{np.mean(v):.2f} +- {np.std(v, ddof=1):.2f}" for v in values) + " |")
    print()
    for metric in METRICS:
        for a, b in PAIRS:
            print("- " + report.describe_gap(report.paired_gap(rows, a, b, metric)))
    (HERE / "rows.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), [int(s) for s in sys.argv[2:]] or [0, 1])
