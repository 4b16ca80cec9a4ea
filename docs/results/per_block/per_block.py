"""Per-block linear probes (issue 31) of the students of a finished `tiny` suite run: each
run's checkpoint evaluated with `mimbench eval linear --set linear.block=all` on the world's
test split, then the curve per target (mean over seeds) drawn by the suite report's own
`block_curves`. Evaluations already in OUT are kept.

    python docs/results/per_block/per_block.py SUITE_FOLDER [SEED ...]
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from mimbench.suites import report

HERE = Path(__file__).resolve().parent
TARGETS = ["clip", "vqkd", "dvae", "pixels"]


def evaluate(suite: Path, target: str, seed: int) -> dict:
    out = HERE / "evals" / f"{target}-s{seed}"
    results = out / "results.json"
    if not results.exists():
        subprocess.run(["mimbench", "eval", "linear", "--checkpoint",
                        str(suite / "runs" / f"{target}-s{seed}" / "checkpoint.pt"),
                        "--set", "linear.block=all", "--out", str(out)], check=True)
    probe = json.loads(results.read_text())["evals"]["linear_probe"]
    return {"target": target, "seed": seed, "point": {},
            "metrics": {f"linear_probe.{k}": v for k, v in probe.items() if k.startswith("top1")}}


def main(suite: Path, seeds: list[int]) -> None:
    rows = [evaluate(suite, target, seed) for target in TARGETS for seed in seeds]
    report.block_curves(rows, HERE)
    blocks = len(report.per_block(rows)["clip"])
    print("| target | " + " | ".join(f"block {b}" for b in range(blocks)) + " | best block |")
    print("|---" * (blocks + 2) + "|")
    for target in TARGETS:
        runs = np.array([[r["metrics"][f"linear_probe.top1_block{b}"] for b in range(blocks)]
                         for r in rows if r["target"] == target])  # [seeds, blocks]
        cells = [f"{m:.2f} +- {s:.2f}" for m, s in zip(runs.mean(0), runs.std(0, ddof=1))]
        print(f"| {target} | " + " | ".join(cells) + f" | {int(runs.mean(0).argmax())} |")
    print()
    for target in TARGETS:  # the best intermediate block against the last, paired by seed
        by_block = [{r["seed"]: r["metrics"][f"linear_probe.top1_block{b}"] for r in rows if r["target"] == target}
                    for b in range(blocks)]
        best = max(range(blocks - 1), key=lambda b: np.mean(list(by_block[b].values())))
        gap = report.paired(f"{target} block {best}", f"{target} block {blocks - 1}", by_block[best],
                            by_block[-1], "linear_probe.top1")
        print("- " + report.describe_gap(gap))


if __name__ == "__main__":
    main(Path(sys.argv[1]), [int(s) for s in sys.argv[2:]] or [0, 1])
