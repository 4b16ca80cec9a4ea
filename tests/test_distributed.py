"""torchrun with the gloo backend on CPU: two processes train exactly as one process with the
same effective batch, and a killed two-process run resumes in one process."""

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import assert_losses_match, last_logged_step, resume_matches, run_cli, wait_until

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


def torchrun_at_step(out, steps, step, stderr=subprocess.DEVNULL):
    """A 2-process run of `steps` steps started in a session of its own, returned once it has
    logged `step`."""
    command, env = torchrun(out, steps)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True,
                            start_new_session=True)
    wait_until(lambda: last_logged_step(out) >= step, proc, timeout=240)
    return proc


def kill_torchrun(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers at once, as a lost node. torchrun starts each worker in
    a session of its own, so killing torchrun's process group alone leaves them training."""
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    for pid in workers:
        os.kill(int(pid), signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_two_processes_match_one_process_with_the_same_effective_batch(tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    single_process_run(single, STEPS)
    command, env = torchrun(double, STEPS)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "effective batch 8 = 4 per process x 2 process(es)" in result.stderr
    assert_losses_match(double, single, STEPS, rel=1e-4)  # rank 0 alone logs, each step once
    saved = json.loads((double / "results.json").read_text())["pretrain"]
    assert saved["world_size"] == 2 and saved["effective_batch"] == 8


def test_two_process_run_killed_then_resumed_in_one_process(tmp_path):
    steps = 30
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    single_process_run(reference, steps)
    kill_torchrun(torchrun_at_step(killed, steps, 5))
    stopped_at = last_logged_step(killed)
    assert 5 <= stopped_at < steps, "the run was not killed mid-training"

    result = resume_matches(killed, reference, steps, rel=1e-4)  # one process, batch 4: accumulates 2
    assert "effective batch 8 = 4 per process x 1 process(es) x 2 accumulation" in result.stderr
    saved = json.loads((killed / "results.json").read_text())
    assert saved["pretrain"]["steps"] == steps
    assert (killed / "config.yaml").read_text().count("batch_size: 4") == 1


# The paper preset with timm's BEiT student (shared relative position bias, layer scale) at
# reduced size on the world, every other setting as published: block masking, random resized
# crops, flip, colour jitter, effective batch split over the processes.
PAPER_REDUCED = ["--preset", "paper", "--target", "pixels", "--set", "student.img_size=32",
                 "--set", "student.patch_size=8", "--set", "student.embed_dim=32",
                 "--set", "student.depth=2", "--set", "student.num_heads=2",
                 "--set", "mask.num_masked=6", "--set", "mask.min_block=2",
                 "--set", "data.name=world", "--set", "data.image_size=32", "--set", "data.length=64",
                 "--set", "optim.epochs=null", "--set", "optim.steps=4",
                 "--set", "optim.warmup_epochs=null", "--set", "optim.warmup_steps=1",
                 "--set", "optim.amp=none", "--set", "run.teacher_amp=none", "--set", "run.device=cpu",
                 "--set", "run.log_every=1", "--set", "run.checkpoint_every=2",
                 "--set", "optim.effective_batch=8"]
MAE_STYLE = ["--set", "student.style=mae", "--set", "student.model=vit_base_patch16_224",
             "--set", "student.extra={}", "--set", "student.decoder_dim=32",
             "--set", "student.decoder_heads=2", "--set", "student.decoder_depth=1"]


@pytest.mark.parametrize("style", ["beit", "mae"])
def test_paper_preset_under_torchrun_equals_one_process_at_the_same_effective_batch(tmp_path, style):
    """One process splits the effective batch of 8 into two forwards of 4 (optim.batch_size is
    the per-device limit); two processes take 4 each. Same losses, step by step."""
    extra = MAE_STYLE if style == "mae" else []
    args = ["pretrain", *PAPER_REDUCED, *extra, "--set", "optim.batch_size=4"]
    one = run_cli(*args, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    assert "effective batch 8 = 4 per process x 1 process(es) x 2 accumulation" in one.stderr
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "-m", "mimbench", *args, "--out", str(tmp_path / "two")]
    two = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "effective batch 8 = 4 per process x 2 process(es) x 1 accumulation" in two.stderr
    assert_losses_match(tmp_path / "two", tmp_path / "one", 4, rel=1e-4)


def rank_of(pid: str) -> int:
    environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    return int(next(v for v in environ if v.startswith(b"RANK=")).split(b"=")[1])


def test_sigterm_to_one_rank_stops_every_rank_at_one_step_and_resumes_exactly(tmp_path):
    """A stop request seen by rank 1 alone (as a scheduler preempting one task) is agreed by
    all ranks: both stop after the same step, rank 0 checkpoints it, and the resumed run's
    losses equal an uninterrupted run's."""
    steps = 30
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    single_process_run(reference, steps)
    proc = torchrun_at_step(stopped, steps, 5, stderr=subprocess.PIPE)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    os.kill(int(next(pid for pid in workers if rank_of(pid) == 1)), signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert "continue with mimbench pretrain --resume" in stderr
    stopped_at = last_logged_step(stopped)
    assert 5 <= stopped_at < steps, "the run was not stopped mid-training"

    resume_matches(stopped, reference, steps, rel=1e-4)
