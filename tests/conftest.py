import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Teachers and downloads go to a per-test cache, never the user's."""
    monkeypatch.setenv("MIMBENCH_HOME", str(tmp_path / "mimbench-home"))


def run_cli(*args, cwd=None, env=None, timeout=300, one_log=False):
    """Run `python -m mimbench ARGS` as a user would; returns the CompletedProcess. one_log: as
    `> log.txt 2>&1` (a SLURM log): stderr joins stdout in one pipe."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "mimbench", *map(str, args)], cwd=cwd,
                          env=full_env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT if one_log else subprocess.PIPE,
                          text=True, timeout=timeout)


def start_cli(*args, **popen):
    """`python -m mimbench ARGS` started in the background; its output is discarded unless
    `stdout`/`stderr` are given."""
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.Popen([sys.executable, "-m", "mimbench", *map(str, args)], **popen)


def wait_until(condition, proc=None, timeout=120, poll=0.01):
    """Polls `condition()` until it holds, `proc` has ended or `timeout` seconds have passed."""
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline and (proc is None or proc.poll() is None):
        time.sleep(poll)


def losses(run_dir):
    """{step: loss} from a run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def last_logged_step(run_dir):
    """The last step in a run's metrics.jsonl; 0 before the first (or while it is half-written)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def assert_losses_match(run_dir, reference, steps, rel):
    """Every step 1..steps logged once, each loss equal to the reference run's."""
    resumed, uninterrupted = losses(run_dir), losses(reference)
    assert sorted(resumed) == list(range(1, steps + 1))  # every step logged once
    for step in range(1, steps + 1):
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=rel, abs=1e-6), step


def resume_matches(run_dir, reference, steps, rel):
    """`mimbench pretrain --resume RUN_DIR` succeeds and its losses equal the reference run's;
    returns the finished command."""
    result = run_cli("pretrain", "--resume", run_dir)
    assert result.returncode == 0, result.stderr
    assert_losses_match(run_dir, reference, steps, rel)
    return result


def evaluated(*args, out, name):
    """`mimbench eval ARGS --out OUT` as a user runs it; the evaluation `name` of its results.json."""
    result = run_cli("eval", *args, "--out", out)
    assert result.returncode == 0, result.stderr
    return json.loads((out / "results.json").read_text())["evals"][name]


@pytest.fixture
def cli(tmp_path):
    def call(*args, **kwargs):
        kwargs.setdefault("cwd", tmp_path)
        return run_cli(*args, **kwargs)
    return call


def write_images(folder: Path, classes=("a", "b"), per_class=4, size=40, seed=0):
    """An ImageNet-style folder of small random PNGs."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / c / f"{i}.png")
    return folder


@pytest.fixture
def image_folder(tmp_path):
    return write_images(tmp_path / "images")
