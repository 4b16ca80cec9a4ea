"""A run killed with SIGKILL resumes from its last checkpoint and ends where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import random
import time

import pytest
import torch

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


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_signal_checkpoints_says_how_to_resume_and_resumes_exactly(tmp_path, sig):
    """SIGINT/SIGTERM at a random step: the run finishes the step, writes a checkpoint there
    (not only at checkpoint_every), says where it stopped; --resume then ends where an
    uninterrupted run ends; no temporary file is left; the wall time counts both parts."""
    reference = tmp_path / "reference"
    assert run_cli(*ARGS, "--set", "run.checkpoint_every=1000", "--out", reference).returncode == 0

    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "mimbench", *ARGS, "--set", "run.checkpoint_every=1000",
                             "--out", str(stopped)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    target = random.Random(int(sig)).randint(3, STEPS - 10)
    deadline = time.time() + 120
    while last_logged_step(stopped) < target and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in stderr, stderr
    message = stderr.strip().splitlines()[-1]
    step = int(message.split("stopped at step ")[1].split(" ")[0])
    assert target <= step < STEPS and f"of {STEPS}; continue with mimbench pretrain --resume" in message
    at_stop = torch.load(stopped / "checkpoint.pt", weights_only=True)
    assert at_stop["step"] == step and at_stop["elapsed_s"] > 0
    assert not list(stopped.glob("*.tmp")) and not list(stopped.glob(".*.tmp"))

    result = run_cli("pretrain", "--resume", stopped)
    assert result.returncode == 0, result.stderr
    resumed, uninterrupted = losses(stopped), losses(reference)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for s in range(1, STEPS + 1):
        assert resumed[s] == pytest.approx(uninterrupted[s], rel=1e-5, abs=1e-6), s
    final = json.loads((stopped / "results.json").read_text())["pretrain"]
    assert final["wall_time_s"] > at_stop["elapsed_s"]  # the first part is counted too
    assert not list(stopped.glob(".*.tmp"))


def test_sigkill_between_pretraining_and_evaluation_resumes_to_the_same_numbers(tmp_path):
    """`run` killed after its pre-training finished, while evaluating: `run --resume` skips
    the finished pre-training, runs the evaluations, and reports what an uninterrupted run does."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["run", "--preset", "smoke", "--target", "pixels", "--set", "run.evals=[linear, finetune]",
            "--set", "finetune.steps=200"]
    whole = run_cli(*args, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mimbench", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            results = json.loads((out / "results.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            results = {}
        if "linear_probe" in results.get("evals", {}):  # evaluating: fine-tuning under way
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = json.loads((out / "results.json").read_text())
    assert "pretrain" in killed and "finetune" not in killed.get("evals", {}), "not killed mid-evaluation"

    resumed = run_cli("run", "--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    assert "already finished its 6 steps" in resumed.stderr
    final, reference = (json.loads((d / "results.json").read_text()) for d in (out, tmp_path / "whole"))
    for name in ("linear_probe", "finetune"):
        assert final["evals"][name]["top1"] == reference["evals"][name]["top1"], name
    assert final["pretrain"]["final_loss"] == reference["pretrain"]["final_loss"]


def test_ctrl_c_during_run_names_run_resume_which_also_evaluates(tmp_path):
    """The hint after Ctrl-C names the command that was interrupted: `run --resume` finishes
    pre-training and then evaluates (`pretrain --resume` would skip the evaluations)."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "mimbench", "run", *ARGS[1:], "--set",
                             "run.evals=[linear]", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while last_logged_step(out) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and f"continue with mimbench run --resume {out}" in stderr, stderr
    resumed = run_cli("run", "--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    assert "linear_probe" in json.loads((out / "results.json").read_text())["evals"]
