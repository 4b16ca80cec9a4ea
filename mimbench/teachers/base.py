"""What every in-project teacher shares: how a build is described (`Teacher`), the config
fields of a teacher trained on the world, the world's scenes it trains on, and the checksum
that guards its cache."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Callable

Progress = Callable[[str, int, int, dict], None]  # (task, step, total, metrics)
FIT_STATE = "fit_state.pt"  # a build's training state (mimbench.fitting.Resumable), while unfinished


@dataclasses.dataclass(frozen=True)
class Teacher:
    """How to train one teacher and how a target refers to the result."""

    name: str
    build: Callable  # (config, folder, progress, parents) -> report dict; writes the files into folder
    # (parents: each parent teacher's name -> the target options that load it)
    weights_file: str  # the file whose checksum guards the cache
    reference: Callable[[Path], dict]  # folder -> the target options that load it
    config: object  # a frozen dataclass; its hash names the cache folder
    build_minutes: float  # wall minutes of one build at 1 thread beside another job on the 2-core reference machine (docs/teachers.md)
    version: int = 1  # the build code's version: bumped whenever the build's code changes

    @property
    def parents(self) -> tuple[str, ...]:
        """The teachers this one is built from (a VQ-KD tokenizer from its CLIP teacher)."""
        parent = getattr(self.config, "teacher", None)
        return (parent,) if parent else ()


@dataclasses.dataclass(frozen=True)
class WorldTeacherConfig:
    """The fields of every teacher trained on the world: its scenes' size and difficulty, and
    the seed of its scenes, initialisation and sampling."""

    image_size: int = 64
    difficulty: int = 0
    seed: int = 0


def world_scenes(split: str, count: int, config: WorldTeacherConfig):
    """The first `count` scenes of a world split at the teacher config's image_size,
    difficulty and seed: (uint8 images [P, 3, S, S], the scenes)."""
    import numpy as np
    import torch

    from mimbench.data.world import World

    world = World(split, length=count, image_size=config.image_size,
                  difficulty=config.difficulty, seed=config.seed, cache=False)
    scenes = [world.scene(i) for i in range(count)]
    return torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2), scenes


def world_images(split: str, count: int, config: WorldTeacherConfig):
    """uint8 [P, 3, S, S]: the images of world_scenes."""
    return world_scenes(split, count, config)[0]


def code_usage(ids, size: int) -> dict:
    """How a tokenizer uses its `size` codes over the token ids `ids`: the perplexity of the
    codes' frequencies and how many are used at all."""
    import math

    import torch

    counts = torch.bincount(ids.flatten(), minlength=size).float()
    p = counts[counts > 0] / counts.sum()
    return {"perplexity": math.exp(-(p * p.log()).sum().item()), "codes_used": int((counts > 0).sum()),
            "code_fraction_used": float((counts > 0).float().mean())}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
