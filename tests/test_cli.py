"""The CLI as a user meets it: real subprocesses, real files."""

import inspect
import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

import mimbench
from mimbench.cli import main
from tests.conftest import evaluated, wait_until


def test_version_and_help(cli):
    result = cli("--version")
    assert result.returncode == 0 and mimbench.__version__ in result.stdout
    result = cli("--help")
    for command in ("run", "pretrain", "targets"):
        assert command in result.stdout


def test_smoke_run_leaves_a_complete_run_directory(cli, tmp_path):
    out = tmp_path / "run"
    result = cli("run", "--target", "pixels", "--preset", "smoke", "--out", out, one_log=True)
    assert result.returncode == 0, result.stdout
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["target"]["name"] == "pixels" and config["optim"]["steps"] == 6
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(isinstance(r["step"], int) and r["loss"] > 0 and 0 <= r["data_wait"] < 1 for r in rows)
    results = json.loads((out / "results.json").read_text())
    assert results["pretrain"]["steps"] == 6
    assert results["pretrain"]["final_loss"] == pytest.approx(rows[-1]["loss"])
    assert results["target"]["grid"] == [4, 4]
    evals = results["evals"]
    assert set(evals) == {"linear_probe", "knn", "segmentation_linear", "finetune", "segmentation"}
    assert evals["knn"]["card"]["features"] == evals["linear_probe"]["card"]["features"]  # one extraction
    seg = evals["segmentation"]
    assert len(seg["per_class_iou"]) == 9 and seg["card"]["headline"] == "mIoU_objects"
    assert seg["mIoU_objects"] == pytest.approx(np.nanmean(seg["per_class_iou"][1:]))
    assert all("card" in e for e in evals.values())
    assert (out / "checkpoint.pt").exists()
    # the batch log: a plain progress line (at least the last step) for each long task, then the table
    log = result.stdout.splitlines()
    for task in ("pre-training 6/6", "features train 1/1", "features val 1/1",
                 "segmentation probe train", "fine-tuning 3/3", "segmentation 3/3", "segmentation val"):
        assert any(line.startswith(task) and "ETA" in line for line in log), task
    table = next(i for i, line in enumerate(log) if "final loss" in line)
    assert table > max(i for i, line in enumerate(log) if "ETA" in line)
    assert any("segmentation.mIoU" in line for line in log[table:])


def test_smoke_run_on_a_folder_dataset(cli, tmp_path, image_folder):
    out = tmp_path / "run"
    result = cli("pretrain", "--target", "pixels", "--preset", "smoke", "--out", out,
                 "--set", "data.name=folder", "--set", f"data.root={image_folder}",
                 "--set", "optim.batch_size=4")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "results.json").read_text())["pretrain"]["steps"] == 6


def test_config_file_and_overrides_land_in_config_yaml(cli, tmp_path):
    (tmp_path / "my.yaml").write_text("mask:\n  kind: random\n  ratio: 0.5\noptim:\n  steps: 2\n")
    out = tmp_path / "run"
    result = cli("pretrain", "--target", "pixels", "--preset", "smoke", "--config", "my.yaml",
                 "--set", "optim.lr=3e-4", "--out", out)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["mask"] == {**config["mask"], "kind": "random", "ratio": 0.5}
    assert config["optim"]["steps"] == 2 and config["optim"]["lr"] == 3e-4


def _fails_cleanly(result, *words):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize("args, words", [
    (["--target", "pixelz"], ["unknown target 'pixelz'", "did you mean 'pixels'"]),
    (["--set", "optim.lrr=3"], ["unknown config key 'optim.lrr'", "did you mean 'lr'"]),
    (["--set", "optm.lr=3"], ["unknown config section 'optm'", "did you mean 'optim'"]),
    (["--set", "optim.lr=fast"], ["'optim.lr' must be a number"]),
    (["--set", "optim.steps=1.5"], ["'optim.steps' must be an integer"]),
    (["--set", "mask.kind=blocks"], ["'mask.kind' must be one of", "did you mean 'block'"]),
    (["--set", "target.layr=3"], ["unknown config key 'target.layr'"]),
    (["--preset", "smok"], ["unknown preset 'smok'", "did you mean 'smoke'"]),
    (["--set", "data.name=folder", "--set", "data.root=/no/such/folder"], ["/no/such/folder", "does not exist"]),
    (["--config", "missing.yaml"], ["missing.yaml"]),
    (["--set", "run.device=gpu"], ["run.device='gpu' is not a torch device"]),
    (["--target", "vqkd", "--set", "student.patch_size=4"],
     ["VQ-KD tokenizer gives a 4x4 token grid but the student has 8x8 patches"]),
    (["--set", "student.style=maee"], ["'student.style' must be one of", "did you mean 'mae'"]),
    (["--set", "student.style=mae", "--set", "student.decoder_dim=30", "--set", "student.decoder_heads=4"],
     ["student.decoder_dim divisible by student.decoder_heads", "width 30, 4 heads"]),
    (["--set", "student.style=mae", "--set", "mask.ratio=0.999"],
     ["covers 16 of the student's 16 patches", "encodes the visible patches only"]),
    *([(["--set", "run.device=cuda"], ["no GPU is visible"])] if not torch.cuda.is_available() else []),
])
def test_bad_inputs_fail_with_one_sentence(tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    defaults = [*(["--preset", "smoke"] if "--preset" not in args else []),
                *(["--target", "pixels"] if "--target" not in args else [])]
    result = CliRunner().invoke(main, ["run", *defaults, "--out", str(tmp_path / "r"), *args])
    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)
    message = result.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in message, message
    assert not (tmp_path / "r").exists()  # nothing half-made


def test_empty_folder_and_corrupt_image(cli, tmp_path, image_folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["pretrain", "--preset", "smoke", "--target", "pixels", "--set", "data.name=folder",
            "--set", "optim.batch_size=4"]
    _fails_cleanly(cli(*base, "--set", f"data.root={empty}", "--out", tmp_path / "r1"),
                   "holds no images")
    bad = image_folder / "a" / "broken.png"
    bad.write_bytes(b"not a png at all")
    _fails_cleanly(cli(*base, "--set", f"data.root={image_folder}", "--out", tmp_path / "r2"),
                   "broken.png", "skip_corrupt")
    result = cli(*base, "--set", f"data.root={image_folder}", "--set", "data.skip_corrupt=true",
                 "--out", tmp_path / "r3")
    assert result.returncode == 0, result.stderr


def test_non_finite_loss_stops_with_advice_and_keeps_files(cli, tmp_path):
    out = tmp_path / "run"
    result = cli("pretrain", "--preset", "smoke", "--target", "pixels", "--out", out,
                 "--set", "optim.lr=1e30", "--set", "optim.clip_grad=null")
    _fails_cleanly(result, "loss became", "lower optim.lr")
    assert (out / "config.yaml").exists() and (out / "metrics.jsonl").exists()


def test_debug_shows_the_traceback(cli):
    result = cli("--debug", "run", "--preset", "smoke", "--target", "pixelz")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_existing_run_directory_is_not_overwritten(cli, tmp_path):
    out = tmp_path / "run"
    assert cli("pretrain", "--preset", "smoke", "--target", "pixels", "--out", out).returncode == 0
    before = (out / "checkpoint.pt").read_bytes()
    _fails_cleanly(cli("pretrain", "--preset", "smoke", "--target", "pixels", "--out", out),
                   "already holds a run", "--resume")
    assert (out / "checkpoint.pt").read_bytes() == before
    result = cli("pretrain", "--resume", out)  # a finished run resumes as a no-op
    assert result.returncode == 0, result.stderr
    assert "already finished its 6 steps" in result.stderr
    assert (out / "checkpoint.pt").read_bytes() == before


def test_targets_list_describes_without_building(monkeypatch):
    """Options and kinds come from the registry and signatures: no factory is called, so no
    weights are downloaded and no model is built. Holds with third-party targets installed."""
    from click.testing import CliRunner

    from mimbench.cli import main
    from mimbench.targets import TARGETS

    called = []
    for entry in TARGETS.entries():
        factory = entry.factory

        def probe(*args, _name=entry.name, _factory=factory, **kwargs):
            called.append(_name)
            return _factory(*args, **kwargs)

        probe.__signature__ = inspect.signature(factory)
        probe.__doc__, probe.kind = factory.__doc__, getattr(factory, "kind", None)
        monkeypatch.setattr(entry, "_factory", probe)
    result = CliRunner().invoke(main, ["targets", "list", "--json"])
    assert result.exit_code == 0, result.output
    assert called == []
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert {rows[n]["source"] for n in ("clip", "dvae", "pixels", "timm")} == {"built-in"}
    assert (rows["dvae"]["kind"], rows["clip"]["kind"]) == ("tokens", "features")
    assert rows["clip"]["options"]["weights"] == "openai" and rows["clip"]["options"]["layer"] == -1


def test_bench_prints_the_step_against_the_bare_reference(cli):
    result = cli("bench", "--preset", "smoke", "--target", "pixels", "--repeats", "1")
    assert result.returncode == 0, result.stderr
    for row in ("mimbench step", "bare reference step", "ratio (step / bare)", "fraction of peak",
                "views + masks for a batch"):
        assert row in result.stdout


def test_eval_a_targets_own_features(cli, tmp_path):
    """`eval knn --model target:clip`: the teacher's frozen features, probed; fine-tuning a
    target without a network to train is refused in one sentence."""
    out = tmp_path / "teacher"
    knn = evaluated("knn", "--model", "target:clip", "--preset", "smoke", out=out, name="knn")
    assert knn["card"]["model"] == "target:clip" and "features average-pooled" in knn["card"]["features"]
    assert knn["card"]["k"] == 20 and knn["card"]["train"]["size"] == 256
    _fails_cleanly(cli("eval", "finetune", "--model", "target:pixels", "--preset", "smoke", "--out", out),
                   "needs a CLIP ResNet tower")
    _fails_cleanly(cli("eval", "linear", "--model", "target:dvae", "--preset", "smoke", "--out", out),
                   "token ids")


def test_progress_is_plain_lines_in_a_log_and_quiet_removes_it(cli, tmp_path):
    """stderr redirected (a SLURM log, nohup): timed plain lines, the last step always."""
    result = cli("--log-every-s", "0", "pretrain", "--preset", "smoke", "--target", "pixels",
                 "--out", tmp_path / "a")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("pre-training ")]
    assert [line.split()[1] for line in lines] == [f"{i}/6" for i in range(1, 7)]
    assert "loss " in lines[-1] and "img/s" in lines[-1] and "ETA 0:00:00" in lines[-1]
    assert "━" not in result.stderr  # no bar drawn into a file
    slow = cli("pretrain", "--preset", "smoke", "--target", "pixels", "--out", tmp_path / "b")
    assert [line.split()[1] for line in slow.stderr.splitlines()
            if line.startswith("pre-training ")] == ["6/6"]  # default: every 30 s, and the end
    quiet = cli("--quiet", "pretrain", "--preset", "smoke", "--target", "pixels", "--out", tmp_path / "c")
    assert quiet.returncode == 0 and "pre-training" not in quiet.stderr


def test_a_suites_bars_go_when_their_tasks_end():
    """On a terminal, `suite run --jobs N` shows one bar per run and task; a finished one goes,
    while a single run keeps its finished bars (teacher, pre-training, evaluations)."""
    from mimbench.cli import ProgressBars

    with ProgressBars(keep_finished=False) as bars:
        bars("r1 pre-training", 1, 2, {"loss": 1.0})
        bars("r2 pre-training", 1, 2, {})
        bars("r1 pre-training", 2, 2, {"loss": 0.5})
        assert [task.description for task in bars.bars.tasks] == ["r2 pre-training"]
        bars("r1 linear probe", 1, 3, {})  # a run's next task gets a bar of its own
        assert len(bars.bars.tasks) == 2
    with ProgressBars() as bars:
        bars("pre-training", 2, 2, {})
        assert [task.completed for task in bars.bars.tasks] == [2]


def test_a_log_times_each_run_of_a_suite_from_its_own_start(monkeypatch, capsys):
    """`suite run --jobs 1 > log`: every run's tasks have the same names; the second run's
    pre-training is timed from its own first step, not from the first run's."""
    from mimbench import cli

    clock = iter([0.0, 100.0, 1000.0, 1010.0])  # run 1: steps 1 and 2; run 2: steps 1 and 2
    monkeypatch.setattr(cli.time, "monotonic", lambda: next(clock))
    lines = cli.PlainLines(every_s=0.0)
    for step in (1, 2, 1, 2):
        lines("pre-training", step, 2, {"img_per_s": 50.0} if step == 1 else {})
    said = capsys.readouterr().err.splitlines()
    assert [line.split("elapsed ")[1].split()[0] for line in said] == ["0:00:00", "0:01:40", "0:00:00", "0:00:10"]


def test_a_log_restarts_the_clock_when_a_run_ends_before_its_last_step(monkeypatch, capsys):
    """A run whose final step is skipped (optim.nonfinite_grads=skip) never reports step
    total; the next run's pre-training, back at step 1, still starts its own clock."""
    from mimbench import cli

    clock = iter([0.0, 100.0, 1000.0, 1010.0])  # run 1: steps 1 and 2 of 3; run 2: steps 1 and 2
    monkeypatch.setattr(cli.time, "monotonic", lambda: next(clock))
    lines = cli.PlainLines(every_s=0.0)
    for step in (1, 2, 1, 2):
        lines("pre-training", step, 3, {})
    said = capsys.readouterr().err.splitlines()
    assert [line.split("elapsed ")[1].split()[0] for line in said] == ["0:00:00", "0:01:40", "0:00:00", "0:00:10"]


def test_one_writer_per_run_directory(tmp_path):
    """Two real processes on one --out: one trains, the other is refused naming the holder;
    a SIGKILLed holder does not block the next run."""
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    args = [sys.executable, "-m", "mimbench", "pretrain", "--preset", "smoke", "--target", "pixels",
            "--out", str(out), "--set", "optim.steps=100000", "--set", "run.checkpoint_every=5"]
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until((out / "checkpoint.pt").exists, first, poll=0.1)
    assert (out / "checkpoint.pt").exists(), "the first run never started training"
    second = subprocess.run([*args[:-4], "--out", str(tmp_path / "other")], capture_output=True, text=True)
    assert second.returncode == 0  # another folder: no conflict
    resumed = subprocess.run([sys.executable, "-m", "mimbench", "pretrain", "--resume", str(out)],
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 2
    assert f"is being written by process {first.pid}" in resumed.stderr.strip().splitlines()[-1]
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    again = subprocess.Popen([sys.executable, "-m", "mimbench", "pretrain", "--resume", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    step = torch.load(out / "checkpoint.pt", weights_only=True)["step"]

    def trains_on():  # the resumed run took the folder
        try:
            return torch.load(out / "checkpoint.pt", weights_only=True)["step"] > step
        except Exception:  # being replaced right now
            return False

    wait_until(trains_on, again, poll=0.2)
    assert again.poll() is None, again.stderr.read()
    again.kill()
    again.wait()


def test_eval_of_a_checkpoint_file_uses_its_saved_student_shape(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("pretrain", "--preset", "smoke", "--target", "pixels", "--out", run,
               "--set", "student.embed_dim=48", "--set", "student.depth=3").returncode == 0
    card = evaluated("knn", "--checkpoint", run / "checkpoint.pt", "--preset", "smoke",
                     out=tmp_path / "eval", name="knn")["card"]
    assert card["features"] == "avg-pooled block 2"  # the saved depth 3, not smoke's 2


BAD_INPUTS = [  # (--set overrides, the sentence's words): each refused before anything is written
    (["mask.ratio=1.5"], "mask.ratio must lie strictly between 0 and 1, not 1.5"),
    (["mask.ratio=0"], "mask.ratio must lie strictly between 0 and 1, not 0.0"),
    (["mask.num_masked=99"], "the mask covers 99 of the student's 16 patches"),
    (["student.patch_size=5"], "student.img_size 32 is not a multiple of student.patch_size 5"),
    (["optim.steps=-1"], "optim.steps must be positive, not -1"),
    (["optim.batch_size=0"], "optim.batch_size must be positive, not 0"),
    (["attentive.epochs=0"], "attentive.epochs must be positive, not 0"),
    (["run.device=cuda:7"], "run.device=cuda:7"),
    (["target.layer=abc"], "'target.layer' must be an integer, not 'abc'"),
    (["segmentation.crop=4"], "segmentation.crop 4 is smaller than a patch (8 px)"),
    (["segmentation.crop=32", "segmentation.stride=64"], "segmentation.stride 64 is larger than segmentation.crop 32"),
    (["eval_data.name=folder", "eval_data.train={root: .}", "eval_data.val={root: .}"],
     "segmentation needs label maps, which dataset 'folder' does not have"),
]


@pytest.mark.parametrize("overrides, words", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_is_one_sentence_and_leaves_nothing(cli, tmp_path, overrides, words):
    if overrides == ["run.device=cuda:7"] and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a GPU 7")
    out = tmp_path / "run"
    sets = [arg for o in overrides for arg in ("--set", o)]
    _fails_cleanly(cli("run", "--target", "clip", "--preset", "smoke", "--out", out, *sets), words)
    assert not out.exists() or not any(out.iterdir())
    assert not list(tmp_path.glob("**/*.tmp"))


def test_eval_of_a_run_uses_its_config_and_keeps_its_results(cli, tmp_path):
    """`eval linear --checkpoint RUN` with no other option: the run's own config (smoke data,
    not the tiny preset's), the same number as the run measured, written under RUN/evals/
    while RUN/results.json stays as it was."""
    run = tmp_path / "run"
    result = cli("run", "--target", "pixels", "--preset", "smoke", "--set", "run.evals=[linear]",
                 "--out", run)
    assert result.returncode == 0, result.stderr
    before = (run / "results.json").read_bytes()
    result = cli("eval", "linear", "--checkpoint", run)
    assert result.returncode == 0, result.stderr
    assert (run / "results.json").read_bytes() == before
    [written] = (run / "evals").glob("linear-*/results.json")
    again = json.loads(written.read_text())["evals"]["linear_probe"]
    original = json.loads(before)["evals"]["linear_probe"]
    assert again["top1"] == original["top1"]
    assert again["card"]["train"] == original["card"]["train"]  # smoke's 256 images, not tiny's


def test_a_gpu_index_beyond_the_machines_is_one_sentence(monkeypatch):
    """cuda:7 where a GPU exists but not that one (simulated: one GPU visible)."""
    from mimbench.distributed import resolve_device
    from mimbench.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"run.device=cuda:7 but this machine has 1 GPU\(s\), cuda:0 to cuda:0"):
        resolve_device("cuda:7")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
