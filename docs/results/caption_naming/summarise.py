"""The five-seed caption_naming table (README.md) from results.json and teachers.json: per row,
the mean +- sd over seeds of each evaluation on the test split, and of the quality of the
teachers the row's runs distilled (each seed built its own); then the CLIP student whose
captions never name the label against the tiny suite's dvae and pixel students
(../tiny_timed: the same seeds, recipe and test split), paired by seed, uncorrected.

    python docs/results/caption_naming/summarise.py                 # print the table
    python docs/results/caption_naming/summarise.py SUITE_OUT      # first write teachers.json
                                                                    # from SUITE_OUT/runs/*/results.json
"""

import json
import statistics
import sys
from pathlib import Path

from mimbench.suites import report

HERE = Path(__file__).resolve().parent
TINY = HERE.parent / "tiny_timed" / "results.json"
ROWS = {"clip-p0": "clip, name_probability 0", "clip-p05": "clip, name_probability 0.5",
        "clip-p1": "clip, name_probability 1 (the tiny suite's clip)",
        "clip-supervised": "supervised (labels)", "random": "random init (floor)"}
METRICS = {"linear probe": "linear_probe.top1", "k-NN": "knn.top1",
           "linear seg (objects)": "segmentation_linear.mIoU_objects", "fine-tuning": "finetune.top1",
           "UperNet (objects)": "segmentation.mIoU_objects"}
TEACHER = {"teacher zero-shot": "zero_shot_shape_acc", "teacher linear probe": "linear_probe_teacher"}


def collect_teachers(suite_out: Path) -> None:
    """teachers.json: run id -> the report (quality, config, SHA-256) of the teacher it distilled."""
    reports = {}
    for results in sorted(suite_out.glob("runs/*/results.json")):
        for used in json.loads(results.read_text()).get("target", {}).get("teachers", {}).values():
            report = json.loads((Path(used["folder"]) / "report.json").read_text())
            if report["sha256"] != used["sha256"]:
                raise SystemExit(f"{used['folder']} now holds other weights than {results.parent.name} used.")
            reports[results.parent.name] = report
    (HERE / "teachers.json").write_text(json.dumps(reports, indent=1) + "\n")


def mean_sd(values: list[float], scale: float = 1.0) -> str:
    return f"{statistics.mean(values) * scale:.2f} +- {statistics.stdev(values) * scale:.2f}"


def main() -> None:
    if len(sys.argv) > 1:
        collect_teachers(Path(sys.argv[1]))
    runs = json.loads((HERE / "results.json").read_text())["runs"]
    teachers = json.loads((HERE / "teachers.json").read_text())
    names = list(TEACHER) + list(METRICS)
    print("| row | n | " + " | ".join(names) + " |\n|---|---" + "|---" * len(names) + "|")
    for row, label in ROWS.items():
        own = [r for r in runs if r["target"] == row]
        distilled = all(r["id"] in teachers for r in own)  # the random row has no teacher
        cells = [mean_sd([teachers[r["id"]][key] for r in own], 100) if distilled else ""
                 for key in TEACHER.values()]
        if row == "clip-supervised":
            cells[0] = "- (text tower untrained)"
        cells += [mean_sd([r["metrics"][m] for r in own]) for m in METRICS.values()]
        print(f"| {label} | {len(own)} | " + " | ".join(cells) + " |")
    tiny = [r for r in json.loads(TINY.read_text())["runs"] if r["target"] in ("dvae", "pixels")]
    print()
    for metric in list(METRICS.values())[:4]:
        for other in ("dvae", "pixels"):
            print("- " + report.describe_gap(report.paired_gap(runs + tiny, "clip-p0", other, metric)))


if __name__ == "__main__":
    main()
