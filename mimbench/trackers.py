"""Where a run's numbers go besides metrics.jsonl and results.json: TensorBoard and Weights &
Biases, each an optional extra, chosen by `run.loggers`.

Pre-training scalars go under `pretrain/` at their step; each evaluation's numbers under
`<evaluation>/` at the run's last pre-training step, its protocol card as text. TensorBoard
writes into RUN/tensorboard, so a suite's runs (SUITE_OUT/runs/<id>/tensorboard) overlay
under one `tensorboard --logdir SUITE_OUT/runs`. W&B runs offline or not at all as
WANDB_MODE says; its files go under RUN/wandb, one W&B run per stage (job type `pretrain` or
`evaluate`) grouped under the run directory's name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

from mimbench.errors import ConfigError

EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # logger -> the package it needs


def check_installed(loggers) -> None:
    """One sentence naming the pip command for a logger whose package is missing."""
    for name in loggers:
        package = EXTRAS.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(f"run.loggers has {name}, which needs the {package} package: "
                              f"pip install 'mimbench[{name}]'.")


class TensorBoard:
    def __init__(self, path: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(path / "tensorboard"))
        self.writer.add_text("config", "    " + json.dumps(config, indent=2).replace("\n", "\n    "))

    def scalars(self, step: int, values: dict) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def text(self, tag: str, text: str) -> None:
        self.writer.add_text(tag, "    " + text.replace("\n", "\n    "))  # shown as code

    def close(self) -> None:
        self.writer.close()


class Wandb:
    def __init__(self, path: Path, config: dict, stage: str):
        import wandb

        # one W&B run per run directory and stage, resumed by the same id after an interruption;
        # stages never share an id, as offline files are named by id and second: two stages
        # starting within one second would write the same file
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "mimbench"),
                              name=f"{path.name}-{stage}", group=path.name, job_type=stage,
                              id=f"mimbench-{digest}-{stage}", resume="allow", dir=str(path),
                              config=config, reinit="create_new")

    def scalars(self, step: int, values: dict) -> None:
        self.run.log(values, step=step)

    def text(self, tag: str, text: str) -> None:
        self.run.summary[tag] = text

    def close(self) -> None:
        import wandb

        self.run.finish()
        # finish() only asks W&B's service process to close the run's file; shutting the
        # service down waits until it has (left running when the caller has a W&B run of its own)
        if wandb.run is None:
            wandb.teardown()


class Trackers:
    """The trackers `run.loggers` names (jsonl is the run directory's own metrics file)."""

    def __init__(self, path: Path, loggers, config: dict, stage: str):
        """loggers: run.loggers; config: the run's config as a dict; stage: "pretrain" or
        "evaluate"."""
        check_installed(loggers)
        path = Path(path)
        kinds = {"tensorboard": lambda: TensorBoard(path, config),
                 "wandb": lambda: Wandb(path, config, stage)}
        self.open = [kinds[name]() for name in loggers if name in kinds]

    def scalars(self, step: int, values: dict) -> None:
        for tracker in self.open:
            tracker.scalars(step, values)

    def evaluation(self, name: str, result: dict, step: int) -> None:
        """An evaluation's numbers under its name, and its protocol card as text."""
        self.scalars(step, {f"{name}/{k}": v for k, v in result.items() if isinstance(v, float)})
        for tracker in self.open:
            tracker.text(f"{name}/card", json.dumps(result.get("card", {}), indent=2, default=str))

    def close(self) -> None:
        for tracker in self.open:
            tracker.close()
        self.open = []
