"""A run killed with SIGKILL resumes from its last checkpoint and ends where an uninterrupted run ends."""

import json
import os
import random
import signal
import subprocess

import pytest
import torch

from tests.conftest import last_logged_step, resume_matches, run_cli, start_cli, wait_until

STEPS = 40
ARGS = ["pretrain", "--preset", "smoke", "--target", "pixels", "--set", f"optim.steps={STEPS}",
        "--set", "optim.batch_size=48", "--set", "run.checkpoint_every=5", "--set", "run.log_every=1"]


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    reference = tmp_path / "reference"
    assert run_cli(*ARGS, "--out", reference).returncode == 0

    killed = tmp_path / "killed"
    proc = start_cli(*ARGS, "--out", killed)
    wait_until(lambda: last_logged_step(killed) >= 12, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stopped_at = last_logged_step(killed)
    assert 12 <= stopped_at < STEPS, "the run was not killed mid-training"

    resume_matches(killed, reference, STEPS, rel=1e-5)
    assert json.loads((killed / "results.json").read_text())["pretrain"]["steps"] == STEPS


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_signal_checkpoints_says_how_to_resume_and_resumes_exactly(tmp_path, sig):
    """SIGINT/SIGTERM at a random step: the run finishes the step, writes a checkpoint there
    (not only at checkpoint_every), says where it stopped; --resume then ends where an
    uninterrupted run ends; no temporary file is left; the wall time counts both parts."""
    reference = tmp_path / "reference"
    assert run_cli(*ARGS, "--set", "run.checkpoint_every=1000", "--out", reference).returncode == 0

    stopped = tmp_path / "stopped"
    proc = start_cli(*ARGS, "--set", "run.checkpoint_every=1000", "--out", stopped,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    target = random.Random(int(sig)).randint(3, STEPS - 10)
    wait_until(lambda: last_logged_step(stopped) >= target, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in stderr, stderr
    message = stderr.strip().splitlines()[-1]
    step = int(message.split("stopped at step ")[1].split(" ")[0])
    assert target <= step < STEPS and f"of {STEPS}; continue with mimbench pretrain --resume" in message
    at_stop = torch.load(stopped / "checkpoint.pt", weights_only=True)
    assert at_stop["step"] == step and at_stop["elapsed_s"] > 0
    assert not list(stopped.glob("*.tmp")) and not list(stopped.glob(".*.tmp"))

    resume_matches(stopped, reference, STEPS, rel=1e-5)
    final = json.loads((stopped / "results.json").read_text())["pretrain"]
    assert final["wall_time_s"] > at_stop["elapsed_s"]  # the first part is counted too
    assert not list(stopped.glob(".*.tmp"))


def test_sigkill_between_pretraining_and_evaluation_resumes_to_the_same_numbers(tmp_path):
    """`run` killed after its pre-training finished, while evaluating: `run --resume` skips
    the finished pre-training, runs the evaluations, and reports what an uninterrupted run does."""
    args = ["run", "--preset", "smoke", "--target", "pixels", "--set", "run.evals=[linear, finetune]",
            "--set", "finetune.steps=200"]
    whole = run_cli(*args, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    proc = start_cli(*args, "--out", out)

    def fine_tuning_under_way():
        try:
            return "linear_probe" in json.loads((out / "results.json").read_text()).get("evals", {})
        except (FileNotFoundError, json.JSONDecodeError):
            return False

    wait_until(fine_tuning_under_way, proc)
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
    out = tmp_path / "run"
    proc = start_cli("run", *ARGS[1:], "--set", "run.evals=[linear]", "--out", out,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: last_logged_step(out) >= 3, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and f"continue with mimbench run --resume {out}" in stderr, stderr
    resumed = run_cli("run", "--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    assert "linear_probe" in json.loads((out / "results.json").read_text())["evals"]
