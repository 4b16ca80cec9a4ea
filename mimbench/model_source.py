"""What an evaluation evaluates, parsed once from what the user typed (--checkpoint, --model)
or what a suite's reference row names:

- a run directory: its latest checkpoint's student encoder;
- a checkpoint file: the same, from that file;
- an exported folder: a timm local-dir (config.json and weights, mimbench export);
- timm:<name>: that timm architecture with the config's student shape, randomly initialised
  (timm:random is the student's own architecture: the random-init floor);
- target:<name>: that target's own network (evals.tower)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mimbench.errors import ConfigError

TIMM, TARGET = "timm:", "target:"


@dataclass(frozen=True)
class ModelSource:
    kind: Literal["run", "checkpoint", "exported", "timm", "target"]
    name: str  # the path, the timm architecture or the target
    text: str  # as the user gave it: how cards name it

    @classmethod
    def parse(cls, text: str) -> ModelSource:
        text = str(text)
        if text.startswith(TIMM):
            return cls("timm", text[len(TIMM):], text)
        if text.startswith(TARGET):
            return cls("target", text[len(TARGET):], text)
        path = Path(text)
        if (path / "config.json").exists():
            return cls("exported", text, text)
        if path.is_dir():
            return cls("run", text, text)
        if path.is_file():
            return cls("checkpoint", text, text)
        raise ConfigError(f"'{text}' is neither a run directory, a checkpoint, an exported folder, "
                          f"timm:<name> nor target:<name>.")

    def __str__(self) -> str:
        return self.text

    @property
    def trained(self) -> bool:
        """A mimbench run or checkpoint: it carries the config it was trained with."""
        return self.kind in ("run", "checkpoint")
