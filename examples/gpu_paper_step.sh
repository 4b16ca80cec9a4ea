#!/usr/bin/env bash
# The paper preset's step on one GPU and its CPU data path: examples/gpu_paper_step.py on a
# machine that has torch, torchvision, timm, click, rich, scipy, pyyaml, pillow and numpy but
# not mimbench, no network, and maybe no open_clip. Results go to $OUT:
#   gpu_paper_step.json  every number (written after each section: a timeout keeps the rest)
#   gpu_paper_step.md    tables to paste into docs/performance.md
#   gpu_paper_step.log   the script's output
#
# Prepare (once, on a machine with network, in the repository root):
#   echo .whl/ >> .git/info/exclude       # keep the wheels out of git
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth regex
# The wheels are only needed for the clip target; without them the script falls back to
# timm's CLIP ViT-B/16 tower (same architecture, random weights) and says so.
#
# Run (in the repository root; the working tree as it is, nothing to build):
#   OUT=/some/empty/dir bash examples/gpu_paper_step.sh            # ~5.5 min on one H200
#   OUT=/tmp/out bash examples/gpu_paper_step.sh --smoke            # CPU check, a few minutes
# Through the device tool: command "bash examples/gpu_paper_step.sh", carry [".whl"].
# Extra arguments go to the Python script (--budget SECONDS, --smoke, --jpeg-dir DIR).
#
# How mimbench becomes importable: pyproject maps mimbench.targets -> targets/ and
# mimbench.evals -> evals/ (package-dir), so the repository root on PYTHONPATH is not enough.
# The packages are copied into $SITE in that layout (what the wheel would install), and the
# missing third-party wheels from .whl/ are unpacked there too; PYTHONPATH=$SITE.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_paper_step_out}
SITE=${SITE:-/tmp/mimbench_site}
WALL=${WALL:-350}  # hard wall-clock limit, seconds; the script's own budget is 320 s
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
LOG=$OUT/gpu_paper_step.log

{
  echo "== setup $(date -u +%FT%TZ) in $REPO"
  rm -rf "$SITE" && mkdir -p "$SITE/mimbench"
  cp -r "$REPO/mimbench/." "$SITE/mimbench/"
  cp -r "$REPO/targets" "$SITE/mimbench/targets"
  cp -r "$REPO/evals" "$SITE/mimbench/evals"
  cp -r "$REPO/suites" "$SITE/mimbench/suites"
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  cd "$SITE"  # not the repository root: its mimbench/ (without targets/, evals/) would shadow $SITE's
  # module:wheel-prefix, dependencies first; a wheel is unpacked only if its module is missing
  for pair in regex:regex- wcwidth:wcwidth- ftfy:ftfy- open_clip:open_clip_torch-; do
    module=${pair%%:*}
    wheel=$(ls "$REPO"/.whl/"${pair#*:}"*.whl 2>/dev/null | head -n 1)
    if "$PY" -c "import $module" 2>/dev/null; then
      echo "have $module"
    elif [ -n "$wheel" ]; then
      echo "unpacking $(basename "$wheel")"
      "$PY" -m zipfile -e "$wheel" "$SITE"  # a wheel is a zip of the installed files
    else
      echo "no $module and no wheel for it in .whl/"
    fi
  done
  "$PY" -c "import mimbench.bench, mimbench.targets, mimbench.evals; print('mimbench imports from', mimbench.__file__)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv
  echo "C compiler (triton and inductor need one): $(command -v gcc || command -v cc || echo none)"
  echo "== run"
  HF_HUB_OFFLINE=1 timeout -k 10 "$WALL" "$PY" "$REPO/examples/gpu_paper_step.py" --out "$OUT" "$@"
  echo "== exit $?"
} >"$LOG" 2>&1

# keep the log small (compile warnings can be long): its first and last 100 KiB
if [ "$(stat -c %s "$LOG")" -gt 250000 ]; then
  { head -c 100000 "$LOG"; printf '\n[... cut ...]\n'; tail -c 100000 "$LOG"; } >"$LOG.cut" && mv "$LOG.cut" "$LOG"
fi
# the summary (and the log's tail if something went wrong) on stdout
cat "$OUT/gpu_paper_step.md" 2>/dev/null || tail -n 60 "$LOG"
grep -q "== exit 0" "$LOG" || { echo "--- log tail"; tail -n 30 "$LOG"; }
