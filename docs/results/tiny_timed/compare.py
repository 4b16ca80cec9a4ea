"""Run by run, the metrics of two results.json files of one suite: which runs reproduce
exactly, and by how much the others moved.

    python docs/results/tiny_timed/compare.py docs/results/tiny_test5/results.json docs/results/tiny_timed/results.json
"""

import json
import sys
from pathlib import Path


def main(before: Path, after: Path) -> None:
    old = {r["id"]: r for r in json.loads(before.read_text())["runs"]}
    new = {r["id"]: r for r in json.loads(after.read_text())["runs"]}
    print("| run | metrics equal | largest change (points) |\n|---|---|---|")
    for run_id, run in new.items():
        if run_id not in old:
            print(f"| {run_id} | not in {before} | |")
            continue
        a, b = old[run_id]["metrics"], run["metrics"]
        shared = sorted(set(a) & set(b))
        equal = sum(a[m] == b[m] for m in shared)
        change = max(shared, key=lambda m: abs(b[m] - a[m]))
        moved = f"{change}: {a[change]:.2f} -> {b[change]:.2f}" if equal < len(shared) else "none"
        print(f"| {run_id} | {equal} of {len(shared)} | {moved} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
