"""The equal-budget search's table (README.md) from its suite folder: every finished run's
linear probe, fine-tuning and linear segmentation (object mIoU), on the world's val split.

    python docs/results/search_equal/summarise.py SUITE_FOLDER
"""

import json
import sys
from pathlib import Path

POINTS = {"s0": "the tiny recipe", "lr0.001-s0": "lr 1e-3", "lr0.004-s0": "lr 4e-3",
          "ratio0.25-s0": "mask ratio 0.25", "ratio0.75-s0": "mask ratio 0.75"}
TARGETS = ["clip", "dvae", "pixels", "vqkd"]


def main(folder: Path) -> None:
    print("| target | point | linear probe | fine-tuning | linear seg (objects) |\n|---|---|---|---|---|")
    for target in TARGETS:
        for suffix, point in POINTS.items():
            path = folder / "runs" / f"{target}-{suffix}" / "results.json"
            evals = json.loads(path.read_text()).get("evals", {}) if path.exists() else {}
            if len(evals) < 3:
                print(f"| {target} | {point} | not finished | | |")
                continue
            print(f"| {target} | {point} | {evals['linear_probe']['top1']:.2f} | {evals['finetune']['top1']:.2f} | "
                  f"{evals['segmentation_linear']['mIoU_objects']:.2f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
