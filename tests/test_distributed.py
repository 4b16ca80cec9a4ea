"""torchrun with the gloo backend on CPU: two processes train exactly as one process with the
same effective batch, and a killed two-process run resumes in one process."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import run_cli
from tests.test_resume import last_logged_step, losses

STEPS = 6
COMMON = ["pretrain", "--preset", "smoke", "--target", "pixels", "--set", "run.log_every=1",
          "--set", "run.checkpoint_every=1", "--set", "target.standardize=true"]


def single_process_run(out, steps):
    """The reference: one process, batch 8."""
    result = run_cli(*COMMON, "--set", f"optim.steps={steps}", "--set", "optim.batch_size=8", "--out", out)
    assert result.returncode == 0, result.stderr


def torchrun(out, steps, nproc=2):
    """The command and environment of a 2-process gloo run with batch 4 per process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "mimbench", *COMMON, "--set",
               f"optim.steps={steps}", "--set", "optim.batch_size=4", "--out", str(out)]
    return command, {**os.environ, "OMP_NUM_THREADS": "1"}


def test_two_processes_match_one_process_with_the_same_effective_batch(tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    single_process_run(single, STEPS)
    command, env = torchrun(double, STEPS)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "effective batch 8 = 4 per process x 2 process(es)" in result.stderr
    one, two = losses(single), losses(double)
    assert sorted(two) == list(range(1, STEPS + 1))  # rank 0 alone logs, each step once
    for step in range(1, STEPS + 1):
        assert two[step] == pytest.approx(one[step], rel=1e-4), step
    saved = json.loads((double / "results.json").read_text())["pretrain"]
    assert saved["world_size"] == 2 and saved["effective_batch"] == 8


def test_two_process_run_killed_then_resumed_in_one_process(tmp_path):
    steps = 30
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    single_process_run(reference, steps)
    command, env = torchrun(killed, steps)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while last_logged_step(killed) < 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers at once
    proc.wait()
    stopped_at = last_logged_step(killed)
    assert 5 <= stopped_at < steps, "the run was not killed mid-training"

    result = run_cli("pretrain", "--resume", killed)  # one process, batch 4: accumulates 2
    assert result.returncode == 0, result.stderr
    assert "effective batch 8 = 4 per process x 1 process(es) x 2 accumulation" in result.stderr
    saved = json.loads((killed / "results.json").read_text())
    assert saved["pretrain"]["steps"] == steps
    assert (killed / "config.yaml").read_text().count("batch_size: 4") == 1
    resumed, uninterrupted = losses(killed), losses(reference)
    assert sorted(resumed) == list(range(1, steps + 1))
    for step in range(1, steps + 1):
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-4), step
