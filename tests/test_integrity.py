"""A number comes from the config, data and teacher it names: what a careless or interrupted
user meets gets the right result or one sentence and a non-zero exit (real CLI subprocesses)."""

import json

import pytest
import yaml

from mimbench import config as cfg
from mimbench.optim import split_batch
from mimbench.errors import ConfigError
from tests.conftest import last_logged_step, run_cli, start_cli, wait_until, write_images

SMOKE = ["--preset", "smoke", "--target", "pixels"]


def one_sentence(result) -> str:
    """The error line of a refused command (exit code 2, no traceback)."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return " ".join(result.stderr.split())


def test_a_files_target_options_apply_to_the_target_given_on_the_command_line(tmp_path):
    (tmp_path / "c.yaml").write_text("target:\n  input_size: 48\n")
    config = cfg.resolve("smoke", tmp_path / "c.yaml", target="dvae")
    assert config.target.name == "dvae" and config.target.options["input_size"] == 48
    (tmp_path / "named.yaml").write_text("target:\n  name: clip\n  layer: 1\n")
    with pytest.raises(ConfigError, match="target section is for 'clip' \\(with layer\\), but this "
                                          "run's target is 'dvae'"):
        cfg.resolve("smoke", tmp_path / "named.yaml", target="dvae")


def test_set_reaches_keys_inside_a_mapping():
    config = cfg.resolve("paper", target="pixels", overrides=(
        "eval_data.train.root=/data/train", "eval_data.val.root=/data/val"))
    assert config.eval_data.train == {"root": "/data/train"}
    config = cfg.resolve("smoke", target="pixels", overrides=("eval_data.train.length=64",))
    assert config.eval_data.train == {"split": "train", "image_size": 32, "length": 64}
    with pytest.raises(ConfigError, match="'optim.lr' is not a mapping"):
        cfg.resolve("smoke", target="pixels", overrides=("optim.lr.x=1",))


def test_a_new_run_in_a_directory_of_another_config_is_refused_naming_the_keys(tmp_path):
    out = tmp_path / "run"
    first = run_cli("pretrain", *SMOKE, "--set", "optim.lr=0.1", "--out", out)
    assert first.returncode == 0, first.stderr
    refused = run_cli("pretrain", *SMOKE, "--set", "optim.lr=0.001", "--out", out)
    assert "holds a run of another config (it differs in optim.lr)" in one_sentence(refused)
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 0.1  # untouched
    again = run_cli("pretrain", *SMOKE, "--set", "optim.lr=0.001", "--out", out, "--overwrite")
    assert again.returncode == 0, again.stderr
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 0.001
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # no line of the old run
    assert json.loads((out / "results.json").read_text())["config"]["optim"]["lr"] == 0.001


def test_a_run_that_died_before_its_first_checkpoint_leaves_no_stale_lines(tmp_path):
    """The same config started again where a run died before saving anything: a fresh run."""
    out = tmp_path / "run"
    assert run_cli("pretrain", *SMOKE, "--out", out).returncode == 0
    for name in ("checkpoint.pt", "checkpoint.prev.pt", "results.json"):
        (out / name).unlink(missing_ok=True)
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 99.0}\n{"step": 2, "lo')  # torn line
    again = run_cli("pretrain", *SMOKE, "--out", out)
    assert again.returncode == 0, again.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and rows[0]["loss"] != 99.0


def test_resuming_a_run_that_saved_no_checkpoint_drops_its_stale_lines(tmp_path):
    """What a suite does with a run it finds unfinished: --resume, which restarts from step 0."""
    out = tmp_path / "run"
    assert run_cli("pretrain", *SMOKE, "--out", out).returncode == 0
    for name in ("checkpoint.pt", "checkpoint.prev.pt", "results.json"):
        (out / name).unlink()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 99.0}\n{"step": 2, "loss": 98.0}\n')
    resumed = run_cli("pretrain", "--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0]["loss"] != 99.0 and rows[1]["loss"] != 98.0


def test_a_torn_metrics_line_is_dropped_on_resume(tmp_path):
    out = tmp_path / "run"
    assert run_cli("pretrain", *SMOKE, "--set", "optim.steps=3", "--out", out).returncode == 0
    (out / "checkpoint.prev.pt").unlink(missing_ok=True)
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["optim"]["steps"] = 6
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "lo')  # a kill mid-write
    resumed = run_cli("pretrain", "--resume", out)
    assert resumed.returncode == 0, resumed.stderr
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_folder_splits_with_different_classes_are_refused_naming_them(tmp_path):
    write_images(tmp_path / "train", classes=("apple", "banana", "cherry"))
    write_images(tmp_path / "val", classes=("apple", "cherry"))
    run = tmp_path / "run"
    assert run_cli("pretrain", *SMOKE, "--out", run).returncode == 0
    result = run_cli("eval", "linear", "--checkpoint", run, "--set", "eval_data.name=folder",
                     "--set", f"eval_data.train={{root: {tmp_path / 'train'}}}",
                     "--set", f"eval_data.val={{root: {tmp_path / 'val'}}}",
                     "--set", "run.evals=[linear]", "--out", tmp_path / "eval")
    assert "train and val splits hold different classes (val lacks banana)" in one_sentence(result)


def test_unrealisable_masks_and_batches_are_refused_before_training(tmp_path):
    result = run_cli("run", *SMOKE, "--set", "mask.min_block=100", "--out", tmp_path / "r")
    assert "mask.min_block 100 is larger than any block that fits the student's 4x4 patch grid" \
        in one_sentence(result)
    assert not (tmp_path / "r").exists()
    both = run_cli("pretrain", *SMOKE, "--set", "optim.effective_batch=16", "--set",
                   "optim.accum_steps=2", "--out", tmp_path / "b")
    assert "set optim.effective_batch (16) or optim.accum_steps (2), not both" in one_sentence(both)
    with pytest.raises(ConfigError, match="leaves a per-device batch of 0 on 4 processes"):
        split_batch(2, 4, 8)
    with pytest.raises(ConfigError, match="does not split evenly over 3 process"):
        split_batch(8, 3, 8)
    assert split_batch(2048, 8, 256) == (256, 1) and split_batch(2048, 1, 256) == (256, 8)
    assert split_batch(24, 1, 10) == (8, 3)  # the fewest forwards within the limit that divide


def test_an_unfinished_run_is_evaluated_only_when_asked_and_then_says_so(tmp_path):
    run = tmp_path / "run"
    assert run_cli("pretrain", *SMOKE, "--out", run).returncode == 0
    checkpoint = run / "checkpoint.prev.pt"  # step 3 of 6, as a run stopped half-way leaves it
    refused = run_cli("eval", "linear", "--checkpoint", checkpoint, "--out", tmp_path / "e1")
    assert "stopped at step 3 of 6: its pre-training is unfinished" in one_sentence(refused)
    asked = run_cli("eval", "linear", "--checkpoint", checkpoint, "--partial", "--out", tmp_path / "e2")
    assert asked.returncode == 0, asked.stderr
    assert "PARTIAL: step 3 of 6" in asked.stdout  # in the table, not only the card
    saved = json.loads((tmp_path / "e2" / "results.json").read_text())
    assert saved["evals"]["linear_probe"]["partial"] == "step 3 of 6"


def test_an_unwritable_folder_gets_one_sentence(tmp_path):
    """/sys refuses new folders even to root (a read-only file system in containers)."""
    result = run_cli("pretrain", *SMOKE, "--out", "/sys/mimbench-run")
    assert "cannot write '/sys/mimbench-run'" in one_sentence(result)
    home = run_cli("run", "--preset", "smoke", "--target", "clip", "--out", tmp_path / "r",
                   env={"MIMBENCH_HOME": "/sys/mimbench-home"})
    assert "cannot write '/sys/mimbench-home" in one_sentence(home)


def test_a_second_run_on_a_busy_directory_is_refused_before_reading_it(tmp_path):
    """Two runs started on one --out: the second is refused in one sentence, having read
    nothing of the first's (its lock is taken before any state is read), and the first
    finishes untouched."""
    out = tmp_path / "run"
    first = start_cli("pretrain", *SMOKE, "--set", "optim.steps=300", "--set", "run.checkpoint_every=1",
                      "--out", out)
    wait_until(lambda: last_logged_step(out) >= 2, first)
    second = run_cli("pretrain", "--preset", "smoke", "--target", "dvae", "--out", out)
    assert f"'{out}' is being written by process {first.pid}" in one_sentence(second)
    assert "size mismatch" not in second.stderr
    assert first.wait(timeout=300) == 0
    assert json.loads((out / "results.json").read_text())["target"]["name"] == "pixels"
