"""A run killed with SIGKILL resumes from its last checkpoint and ends where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import run_cli

STEPS = 40
ARGS = ["pretrain", "--preset", "smoke", "--target", "pixels", "--set", f"optim.steps={STEPS}",
        "--set", "optim.batch_size=48", "--set", "run.checkpoint_every=5", "--set", "run.log_every=1"]


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def last_logged_step(run_dir):
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    reference = tmp_path / "reference"
    assert run_cli(*ARGS, "--out", reference).returncode == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mimbench", *ARGS, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while last_logged_step(killed) < 12 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stopped_at = last_logged_step(killed)
    assert 12 <= stopped_at < STEPS, "the run was not killed mid-training"

    result = run_cli("pretrain", "--resume", killed)
    assert result.returncode == 0, result.stderr
    resumed, uninterrupted = losses(killed), losses(reference)
    assert sorted(resumed) == list(range(1, STEPS + 1))  # every step logged once
    assert json.loads((killed / "results.json").read_text())["pretrain"]["steps"] == STEPS
    for step in range(1, STEPS + 1):
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-5, abs=1e-6), step
