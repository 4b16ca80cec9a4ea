"""The equal-budget search's table (README.md) from its results.json: each run's linear probe,
fine-tuning and linear segmentation (object mIoU), on the world's val split, seed 0, with the
random-init floor's; and each target's best point per metric.

    python docs/results/search_equal/summarise.py
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
POINTS = {"s0": "the tiny recipe", "lr0.001-s0": "lr 1e-3", "lr0.004-s0": "lr 4e-3",
          "ratio0.25-s0": "mask ratio 0.25", "ratio0.75-s0": "mask ratio 0.75"}
TARGETS = ["clip", "dvae", "pixels", "vqkd"]
METRICS = {"linear probe": "linear_probe.top1", "fine-tuning": "finetune.top1",
           "linear seg (objects)": "segmentation_linear.mIoU_objects"}


def main() -> None:
    runs = {r["id"]: r["metrics"] for r in json.loads((HERE / "results.json").read_text())["runs"]}
    print("| target | point | " + " | ".join(METRICS) + " |\n|---|---" + "|---" * len(METRICS) + "|")
    for target in TARGETS:
        for suffix, point in POINTS.items():
            metrics = runs[f"{target}-{suffix}"]
            print(f"| {target} | {point} | " + " | ".join(f"{metrics[m]:.2f}" for m in METRICS.values()) + " |")
    print("| random (floor, no pre-training) | - | " + " | ".join(f"{runs['random-s0'][m]:.2f}" for m in METRICS.values()) + " |")
    print("\n| target | " + " | ".join(f"best {name}" for name in METRICS) + " |\n|---" + "|---" * len(METRICS) + "|")
    for target in TARGETS:
        cells = []
        for metric in METRICS.values():
            suffix = max(POINTS, key=lambda s: runs[f"{target}-{s}"][metric])
            cells.append(f"{runs[f'{target}-{suffix}'][metric]:.2f} ({POINTS[suffix]})")
        print(f"| {target} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
