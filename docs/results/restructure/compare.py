"""compare.py A B: metrics.jsonl and results.json of runs under two folders, wall times and paths aside."""
import json, sys
from pathlib import Path
A, B = map(Path, sys.argv[1:3])
TIMEY = ("data_wait", "time", "wall", "_s", "elapsed", "seconds", "per_s", "throughput")
def clean(x, root):
    if isinstance(x, dict):
        return {k: clean(v, root) for k, v in x.items() if not any(w in k for w in TIMEY)}
    if isinstance(x, list): return [clean(v, root) for v in x]
    if isinstance(x, str): return x.replace(str(root), "ROOT")
    return x
def diff(a, b, p=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)): diff(a.get(k), b.get(k), p + "." + k)
    elif a != b: print("   ", p, a, b)
ok = True
for run in sorted(d.name for d in A.iterdir() if d.is_dir()):
    for f in ("results.json", "metrics.jsonl"):
        load = (lambda p: [json.loads(l) for l in p.read_text().splitlines()]) if f.endswith("l") else (lambda p: [json.loads(p.read_text())])
        ra = [clean(x, A) for x in load(A / run / f)]
        rb = [clean(x, B) for x in load(B / run / f)]
        same = ra == rb
        ok &= same
        print(run, f, "identical" if same else "DIFFERENT", f"({len(ra)} lines)")
        if not same:
            for x, y in zip(ra, rb): diff(x, y)
print("ALL IDENTICAL" if ok else "DIFFERENCES")
