"""How the tiny student's pre-training step scales with batch size and image size (pixel
target, patch 4), on this machine. Prints the medians and draws them.

Run: python examples/step_scaling.py docs/step_scaling.png
"""

import json
import statistics
import sys

import matplotlib

from mimbench import config as cfg
from mimbench.bench import prepare, timed

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file backend)

BATCHES = [16, 32, 64, 128]  # at 32 px
SIZES = [16, 32, 48, 64]  # at batch 64


def step_seconds(batch: int, size: int) -> float:
    config = cfg.resolve("tiny", target="pixels",
                         overrides=(f"student.img_size={size}", f"data.image_size={max(64, size)}"))
    return statistics.median(timed(prepare(config, batch).ours, 3))


def main(path: str) -> None:
    by_batch = [step_seconds(b, 32) for b in BATCHES]
    by_size = [step_seconds(64, s) for s in SIZES]
    print(json.dumps({"batch": dict(zip(BATCHES, by_batch)), "size": dict(zip(SIZES, by_size))}))
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    left.plot(BATCHES, [t * 1e3 for t in by_batch], marker="o")
    left.set_xlabel("batch (32 px)")
    left.set_ylabel("step, ms")
    right.plot(SIZES, [t * 1e3 for t in by_size], marker="o")
    right.set_xlabel("image side, px (batch 64, patch 4)")
    right.set_ylabel("step, ms")
    fig.suptitle("tiny student, pixel target: one pre-training step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1])
