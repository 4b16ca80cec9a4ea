"""The miniature's ordering of targets beside the published ViT-B/16 ordering, with Kendall's tau
per evaluation. Reads the shipped suite results next to this file; writes calibration.json and
prints the tables of README.md.

    python docs/results/calibration/calibrate.py
"""

import json
from pathlib import Path

import numpy as np
from scipy import stats

HERE = Path(__file__).resolve().parent
RESULTS = [HERE.parent / "tiny" / "results.json", HERE.parent / "tiny_seeds34" / "results.json",
           HERE / "hog" / "results.json"]
TARGETS = ["pixels", "dvae", "hog", "vqkd", "clip"]
# Published ViT-B/16 figures at (about) 300 pre-training epochs on ImageNet-1k, as collected in
# issue 29 (sources in README.md). None: not published for that method.
PUBLISHED = {
    "fine-tuning top-1": {"pixels": 82.8, "dvae": 83.1, "hog": 83.4, "vqkd": 85.0, "clip": 84.4},
    "ADE20K mIoU (UperNet)": {"pixels": 48.1, "dvae": 45.6, "hog": None, "vqkd": 53.1, "clip": 52.4},
    "linear probe top-1": {"pixels": 68.0, "dvae": 56.7, "hog": None, "vqkd": 80.1, "clip": None},
}
# The miniature's evaluation set beside each published one.
MINIATURE = {"fine-tuning top-1": ["finetune.top1"],
             "ADE20K mIoU (UperNet)": ["segmentation.mIoU_objects", "segmentation_linear.mIoU_objects"],
             "linear probe top-1": ["linear_probe.top1"]}


def miniature_means() -> dict[str, dict[str, tuple[float, int]]]:
    """metric -> target -> (mean over the seeds that ran it, number of seeds)."""
    values: dict[str, dict[str, list[float]]] = {}
    for path in RESULTS:
        for run in json.loads(path.read_text())["runs"]:
            if run["target"] in TARGETS and not run["point"]:
                for metric, value in run["metrics"].items():
                    values.setdefault(metric, {}).setdefault(run["target"], []).append(value)
    return {m: {t: (float(np.mean(v)), len(v)) for t, v in by_target.items()} for m, by_target in values.items()}


def main() -> None:
    means = miniature_means()
    out = []
    for evaluation, published in PUBLISHED.items():
        for metric in MINIATURE[evaluation]:
            shared = [t for t in TARGETS if published[t] is not None and t in means[metric]]
            tau = stats.kendalltau([published[t] for t in shared], [means[metric][t][0] for t in shared])
            out.append({"published": evaluation, "miniature": metric, "targets": shared,
                        "published_values": {t: published[t] for t in shared},
                        "miniature_means": {t: means[metric][t][0] for t in shared},
                        "seeds": {t: means[metric][t][1] for t in shared},
                        "kendall_tau": float(tau.statistic), "p": float(tau.pvalue)})
    (HERE / "calibration.json").write_text(json.dumps(out, indent=2))
    for row in out:
        print(f"\n{row['published']} vs {row['miniature']}: tau = {row['kendall_tau']:+.2f} "
              f"(p = {row['p']:.2f}, {len(row['targets'])} targets)\n")
        print("| target | published | miniature (mean) | seeds |\n|---|---|---|---|")
        for t in row["targets"]:
            print(f"| {t} | {row['published_values'][t]} | {row['miniature_means'][t]:.2f} | {row['seeds'][t]} |")


if __name__ == "__main__":
    main()
