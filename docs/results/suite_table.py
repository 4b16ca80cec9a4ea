"""A suite's headline table for a results README: mean +- sd over seeds, in %, per row (a
target at a grid point), the segmentation columns as object-class mIoU.

    python docs/results/suite_table.py docs/results/bootstrap/results.json
"""

import json
import sys
from pathlib import Path

import numpy as np

COLUMNS = {"linear probe": "linear_probe.top1", "k-NN": "knn.top1",
           "linear seg": "segmentation_linear.mIoU_objects", "fine-tuning": "finetune.top1",
           "UperNet seg": "segmentation.mIoU_objects"}


def label(run: dict) -> str:
    point = ", ".join(f"{k.split('.')[-1]} {v}" for k, v in run["point"].items())
    return f"{run['target']} ({point})" if point else run["target"]


def main(path: Path) -> None:
    runs = json.loads(path.read_text())["runs"]
    rows = list(dict.fromkeys(label(r) for r in runs))  # in the suite's order
    print("| row | seeds | " + " | ".join(COLUMNS) + " |\n|---|---" + "|---" * len(COLUMNS) + "|")
    for row in rows:
        mine = [r for r in runs if label(r) == row]
        cells = []
        for metric in COLUMNS.values():
            values = [r["metrics"][metric] for r in mine if metric in r["metrics"]]
            cells.append(f"{np.mean(values):.2f} +- {np.std(values, ddof=1):.2f}" if len(values) > 1
                         else f"{values[0]:.2f}" if values else "-")
        print(f"| {row} | {len(mine)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
