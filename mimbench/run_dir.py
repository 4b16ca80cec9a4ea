"""One run's directory: config.yaml, metrics.jsonl, checkpoints, results.json, evaluations;
who may write it (mimbench.run_lock) and whether a new run may start there (its identity)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from mimbench import checkpoint, config as cfg, run_lock
from mimbench.config import Config
from mimbench.errors import MimbenchError
from mimbench.trackers import Trackers


class RunDir:
    """The files of one run: config.yaml, metrics.jsonl, checkpoint.pt, results.json and each
    evaluation's per-image predictions."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.metrics = self.path / "metrics.jsonl"
        self.checkpoint = self.path / checkpoint.CHECKPOINT
        self.results = self.path / "results.json"
        self.predictions = self.path / "predictions"
        self.trackers: Trackers | None = None

    # everything a run writes into its directory (run_lock's lock file aside)
    FILES = ("config.yaml", "metrics.jsonl", checkpoint.CHECKPOINT, checkpoint.PREVIOUS,
             "results.json", "predictions", "features", "evals", "tensorboard", "wandb")

    def saved_config(self) -> Config | None:
        return cfg.from_dict(cfg.load_yaml(self.config)) if self.config.exists() else None

    def clear(self) -> None:
        """Remove what an earlier run wrote here, so that a new one starts afresh."""
        for name in self.FILES:
            path = self.path / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def begin(self, config: Config) -> None:
        """Take the folder for this process (mimbench.run_lock), creating it, write
        config.yaml unless a run started here already, and open run.loggers' trackers."""
        run_lock.hold(self.path)
        if not self.config.exists():
            self.config.write_text(cfg.dump_yaml(config))
        self.trackers = Trackers(self.path, config.run.loggers, cfg.to_dict(config), "pretrain")

    def log_metrics(self, row: dict) -> None:
        with self.metrics.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.trackers:
            self.trackers.scalars(row["step"], {f"pretrain/{k}": v for k, v in row.items() if k != "step"})

    def close(self) -> None:
        if self.trackers:
            self.trackers.close()
            self.trackers = None

    def truncate_metrics(self, last_step: int) -> None:
        """Drop lines logged after the checkpoint a resumed run restarts from (all of them
        when it restarts from step 0)."""
        if not self.metrics.exists():
            return
        kept = [line for line in self.metrics.read_text().splitlines()
                if (row := parsed_row(line)) is not None and row["step"] <= last_step]
        tmp = self.metrics.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(self.metrics)

    def write_results(self, results: dict) -> None:
        tmp = self.results.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(self.results)

    def write_predictions(self, evaluation: str, predicted, labels) -> str:
        """predictions/EVALUATION.npz: each val image's predicted class and label, in the val
        split's order (what a bootstrap over images resamples); returns its path in the run."""
        self.predictions.mkdir(parents=True, exist_ok=True)
        path = self.predictions / f"{evaluation}.npz"
        with open(path.with_suffix(".tmp"), "wb") as f:
            np.savez(f, **{key: torch.as_tensor(values).cpu().numpy().astype(np.int16)
                           for key, values in (("predicted", predicted), ("labels", labels))})
        path.with_suffix(".tmp").replace(path)
        return str(path.relative_to(self.path))


def read_predictions(folder: Path, evaluation: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(predicted [N], labels [N]) saved by an evaluation of the run in `folder`; None if none."""
    path = RunDir(folder).predictions / f"{evaluation}.npz"
    if not path.exists():
        return None
    with np.load(path) as saved:
        return saved["predicted"], saved["labels"]


def parsed_row(line: str) -> dict | None:
    """A metrics.jsonl line, or None for a blank or torn one (a kill or a full disk mid-write)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) and "step" in row else None


def open_run(out: str | Path, resume: bool, config: Config | None = None,
             overwrite: bool = False) -> RunDir:
    """The run directory at `out`: an existing run to resume, or a place for a new run of
    `config`. A directory holding a run of another config is refused, naming the keys that
    differ, unless `overwrite` (which removes the old run's files); one holding a run of the
    same config that saved no checkpoint starts afresh (its stale lines are dropped)."""
    run = RunDir(out)
    if resume:
        if not run.config.exists():
            raise MimbenchError(f"'{run.path}' is not a run directory (no config.yaml); "
                                f"check the path given to --resume.")
        return run
    saved = run.saved_config()
    if saved is None:  # a new folder, or one holding no run: nothing of mimbench's to remove
        return run
    if overwrite:
        run.clear()
        return run
    changed = cfg.differing_keys(saved, config) if config is not None else []
    if changed:
        raise MimbenchError(f"'{run.path}' holds a run of another config (it differs in "
                            f"{', '.join(changed[:8])}{' ...' if len(changed) > 8 else ''}); "
                            f"choose another --out, or add --overwrite to start afresh there.")
    if run.checkpoint.exists():
        raise MimbenchError(f"'{run.path}' already holds a run; continue it with --resume "
                            f"{run.path}, choose another --out, or add --overwrite.")
    run.clear()  # the same config, nothing saved: a run that died before its first checkpoint
    return run


def kept_note(run: RunDir) -> str:
    """What a stopped run leaves behind, for its error message."""
    if run.checkpoint.exists():
        return f"the last good checkpoint in '{run.path}' is kept"
    return "no checkpoint was written yet"
