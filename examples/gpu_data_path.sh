#!/usr/bin/env bash
# The paper preset's pre-training on one GPU over a folder of JPEGs, with the data made by PIL
# in DataLoader workers (data.decode=workers) and on the GPU (data.decode=device): images/s
# and the fraction of each step spent waiting for data, from metrics.jsonl. Results in $OUT.
# Run in the repository root on a machine with torch, torchvision, timm, click, rich, scipy,
# pyyaml and pillow (the device tool: command "bash examples/gpu_data_path.sh").
set -uo pipefail
REPO=$(pwd)
OUT=${OUT:-/tmp/gpu_data_path_out}; mkdir -p "$OUT"
SITE=/tmp/mimbench_site; rm -rf "$SITE"; mkdir -p "$SITE/mimbench"
cp -r mimbench/. "$SITE/mimbench/"
for d in targets evals suites; do cp -r "$d" "$SITE/mimbench/$d"; done
export PYTHONPATH=$SITE HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
cd /tmp
python3 - <<'PY'
import numpy as np, os
from PIL import Image
rng = np.random.default_rng(0)
for c in range(4):
    os.makedirs(f"/tmp/jpegs/c{c}", exist_ok=True)
    for i in range(512):  # ImageNet-like: 500x375 or 375x500, smooth noise
        h, w = (375, 500) if i % 2 else (500, 375)
        coarse = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((w, h), Image.BILINEAR).save(f"/tmp/jpegs/c{c}/{i}.JPEG", quality=90)
PY
common="pretrain --preset paper --target pixels --set data.root=/tmp/jpegs --set optim.effective_batch=256
  --set optim.epochs=null --set optim.steps=60 --set optim.warmup_epochs=null --set optim.warmup_steps=5
  --set run.log_every=10 --set run.checkpoint_every=1000"
for mode in "workers 15" "device 4"; do
  set -- $mode
  timeout 200 python3 -m mimbench --log-every-s 20 $common --set data.decode=$1 --set data.num_workers=$2 \
      --out "/tmp/run-$1" > "$OUT/run-$1.log" 2>&1
  echo "== $1 ($2 workers): rc $?" | tee -a "$OUT/summary.txt"
  cp "/tmp/run-$1/metrics.jsonl" "$OUT/metrics-$1.jsonl" 2>/dev/null
  python3 - "$1" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
rows = [json.loads(l) for l in open(f"/tmp/run-{sys.argv[1]}/metrics.jsonl")]
late = [r for r in rows if r["step"] > 20]  # after start-up and the loader's first batches
print(f"{sys.argv[1]}: steps 21-60: {sum(r['img_per_s'] for r in late) / len(late):.0f} img/s, "
      f"waiting for data {100 * sum(r['data_wait'] for r in late) / len(late):.0f} % of the time; "
      f"final loss {rows[-1]['loss']:.4f}")
PY
done
nproc | sed 's/^/cpus: /' | tee -a "$OUT/summary.txt"
