"""run.loggers: TensorBoard event files and W&B offline runs hold what metrics.jsonl and
results.json hold; a missing extra is one sentence."""

import json

import pytest

from mimbench import config as cfg
from mimbench.errors import ConfigError
from mimbench.evals import run_evals
from mimbench.model_source import ModelSource
from mimbench.engine import pretrain
from mimbench.run_dir import RunDir

SMOKE = ("optim.steps=4", "run.checkpoint_every=2", "run.evals=[linear]")


def trained(tmp_path, loggers: str) -> tuple[RunDir, dict]:
    config = cfg.resolve("smoke", target="pixels", overrides=(*SMOKE, f"run.loggers={loggers}"))
    run = RunDir(tmp_path / "run")
    pretrain(config, run)
    return run, run_evals(["linear"], config, ModelSource.parse(run.path), run.path)


def test_tensorboard_events_hold_the_runs_scalars_and_cards(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, results = trained(tmp_path, "[jsonl, tensorboard]")
    events = EventAccumulator(str(run.path / "tensorboard"))
    events.Reload()
    logged = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    for key in ("loss", "lr"):
        read = [(e.step, e.value) for e in events.Scalars(f"pretrain/{key}")]
        assert [s for s, _ in read] == [row["step"] for row in logged]
        assert [v for _, v in read] == pytest.approx([row[key] for row in logged], rel=1e-6)
    (top1,) = events.Scalars("linear_probe/top1")
    assert top1.step == 4 and top1.value == pytest.approx(results["evals"]["linear_probe"]["top1"])
    assert "linear_probe/card/text_summary" in events.Tags()["tensors"]
    assert "config/text_summary" in events.Tags()["tensors"]


def test_wandb_offline_run_files_hold_the_scalars(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run, results = trained(tmp_path, "[jsonl, wandb]")
    # one W&B run per stage, named <run directory>-<stage>; read right after the evaluation returned
    logs = {p.parent.name.rsplit("-", 1)[-1]: p.read_bytes()
            for p in (run.path / "wandb").glob("offline-run-*/run-*.wandb")}
    assert sorted(logs) == ["evaluate", "pretrain"]
    last = json.loads(run.metrics.read_text().splitlines()[-1])
    for text in ("pretrain/loss", json.dumps(last["loss"]), "run-pretrain"):
        assert text.encode() in logs["pretrain"], text  # records hold keys and JSON values as text
    for text in ("linear_probe/top1", json.dumps(results["evals"]["linear_probe"]["top1"]),
                 "linear_probe/card", "run-evaluate"):
        assert text.encode() in logs["evaluate"], text
    assert b"pretrain/loss" not in logs["evaluate"]


def test_a_missing_tracker_package_names_the_pip_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs the wandb package: pip install 'mimbench\[wandb\]'"):
        cfg.resolve("smoke", target="pixels", overrides=("run.loggers=[wandb]",))
    with pytest.raises(ConfigError, match="'run.loggers' must be one of"):
        cfg.resolve("smoke", target="pixels", overrides=("run.loggers=[tensorbord]",))
