"""Where the wall time of a fresh `mimbench suite run` went: each teacher build's own
record (report.json's build_seconds and threads, in the cache the suite built into) and each
run's span (its config.yaml written when it started, its results.json when it finished). A
suite builds its teachers inside the first runs that need them, so a run's span includes the
builds it did or waited for.

    python docs/results/tiny_timed/timings.py SUITE_FOLDER MIMBENCH_HOME
"""

import json
import sys
from collections import defaultdict
from pathlib import Path


def main(suite: Path, home: Path) -> None:
    builds = defaultdict(list)  # teacher kind -> minutes of each build
    for report in sorted((home / "teachers").glob("*/report.json")):
        record = json.loads(report.read_text())
        kind = record["teacher"].split("?")[0]
        builds[kind].append(record["build_seconds"] / 60)
        print(f"build {record['teacher']}: {record['build_seconds'] / 60:.1f} min at {record['threads']} thread(s)")
    spans = defaultdict(list)  # target -> minutes of each run
    for run in sorted((suite / "runs").iterdir()):
        started, finished = (run / "config.yaml").stat().st_mtime, (run / "results.json").stat().st_mtime
        spans[run.name.rsplit("-s", 1)[0]].append((finished - started) / 60)
    print("\n| work | count | minutes each (mean, min-max) | minutes in all |\n|---|---|---|---|")
    for name, minutes in [*(("build " + k, v) for k, v in builds.items()), *spans.items()]:
        print(f"| {name} | {len(minutes)} | {sum(minutes) / len(minutes):.1f} ({min(minutes):.1f}-{max(minutes):.1f}) "
              f"| {sum(minutes):.0f} |")
    print(f"\nall runs, builds included: {sum(map(sum, spans.values())):.0f} process-minutes")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
