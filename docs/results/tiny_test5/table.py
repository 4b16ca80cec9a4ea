"""The headline table of README.md (mean +- sd over seeds, in %, segmentation as object-class
mIoU) and the timing of the suite's parts, from the suite's own files next to this one.

    python docs/results/tiny_test5/table.py
"""

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROWS = ["clip", "dvae", "pixels", "vqkd", "random", "teacher"]
COLUMNS = {"linear probe": "linear_probe.top1", "k-NN": "knn.top1",
           "linear seg": "segmentation_linear.mIoU_objects", "fine-tuning": "finetune.top1",
           "UperNet seg": "segmentation.mIoU_objects"}


def main() -> None:
    runs = json.loads((HERE / "results.json").read_text())["runs"]
    print("| row | " + " | ".join(COLUMNS) + " |\n|---" + "|---" * len(COLUMNS) + "|")
    for row in ROWS:
        cells = []
        for metric in COLUMNS.values():
            values = [r["metrics"][metric] for r in runs if r["target"] == row and metric in r["metrics"]]
            cells.append(f"{np.mean(values):.2f} +- {np.std(values, ddof=1):.2f}" if len(values) > 1 else "-")
        print(f"| {row} | " + " | ".join(cells) + " |")
    seeds = sorted({r["seed"] for r in runs})
    print(f"\nseeds: {seeds}")


if __name__ == "__main__":
    main()
