"""Tiny teachers trained in-project on the world, cached by a hash of their config.

A config value "teacher:NAME" (e.g. target.model=teacher:clip) is replaced by the path of the
built teacher, so the target loads it through its ordinary local-file path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Callable

from filelock import FileLock

from mimbench.errors import ConfigError
from mimbench.registry import did_you_mean
from mimbench.weights import cache_dir

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int, dict], None]  # (task, step, total, metrics)
PREFIX = "teacher:"
FIT_STATE = "fit_state.pt"  # a build's training state (mimbench.fitting.Resumable), while unfinished


@dataclasses.dataclass(frozen=True)
class Teacher:
    """How to train one teacher and how a target refers to the result."""

    name: str
    build: Callable  # (config, folder, progress) -> report dict; writes the files into folder
    weights_file: str  # the file whose checksum guards the cache
    reference: Callable[[Path], dict]  # folder -> the target options that load it
    config: object  # a frozen dataclass; its hash names the cache folder
    build_minutes: float  # wall minutes of one build on the 2-core reference machine (docs/teachers.md)
    version: int = 1  # the build code's version: bumped whenever the build's code changes

    @property
    def parents(self) -> tuple[str, ...]:
        """The teachers this one is built from (a VQ-KD tokenizer from its CLIP teacher)."""
        parent = getattr(self.config, "teacher", None)
        return (parent,) if parent else ()


def _registry() -> dict[str, Teacher]:
    from mimbench.teachers import clip, dvae, vqkd

    return {t.name: t for t in (*clip.TEACHERS, *dvae.TEACHERS, *vqkd.TEACHERS)}


def world_images(split: str, count: int, config):
    """The first `count` scenes of a world split at the teacher config's image_size,
    difficulty and seed: uint8 [P, 3, S, S]."""
    import numpy as np
    import torch

    from mimbench.data.world import World

    world = World(split, length=count, image_size=config.image_size,
                  difficulty=config.difficulty, seed=config.seed, cache=False)
    pixels = np.stack([world.scene(i).image for i in range(count)])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(teacher: Teacher) -> str | None:
    """A short hash of everything a build depends on: its config, its code's version and the
    weights (SHA-256) of the teachers it is built from; None while one of those is not built."""
    inputs = {"config": dataclasses.asdict(teacher.config), "version": teacher.version, "parents": {}}
    for name in teacher.parents:
        parent = get(name)
        if not cached(name):
            return None
        inputs["parents"][name] = json.loads((folder_for(parent) / "report.json").read_text())["sha256"]
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]


def folder_for(teacher: Teacher) -> Path | None:
    key = cache_key(teacher)
    return cache_dir() / "teachers" / f"{teacher.name}-{key}" if key else None


def _intact(folder: Path, teacher: Teacher) -> bool:
    report = folder / "report.json"
    weights = folder / teacher.weights_file
    if not report.exists() or not weights.exists():
        return False
    try:
        return json.loads(report.read_text())["sha256"] == sha256(weights)
    except (ValueError, KeyError):
        return False


def get(reference: str) -> Teacher:
    """A teacher by name, its config's fields changed by options after '?':
    'clip?name_probability=0.25&seed=1' (a build of its own, cached under its own key)."""
    name, _, options = reference.partition("?")
    teachers = _registry()
    if name not in teachers:
        raise ConfigError(f"unknown teacher '{name}'{did_you_mean(name, teachers)}; "
                          f"teachers are: {', '.join(teachers)}.")
    teacher = teachers[name]
    changes = {}
    for option in filter(None, options.split("&")):
        key, _, value = option.partition("=")
        default = getattr(teacher.config, key, None)
        if not isinstance(default, (int, float, str)) or isinstance(default, bool):
            fields = [f.name for f in dataclasses.fields(teacher.config)]
            raise ConfigError(f"teacher {name} has no number or text option '{key}'"
                              f"{did_you_mean(key, fields)}; write '{name}?key=value&key=value'.")
        try:
            changes[key] = type(default)(value)
        except ValueError:
            raise ConfigError(f"teacher option {key}={value!r} is not a {type(default).__name__}.") from None
    return dataclasses.replace(teacher, config=dataclasses.replace(teacher.config, **changes))


def cached(name: str) -> bool:
    teacher = get(name)
    folder = folder_for(teacher)
    return folder is not None and _intact(folder, teacher)


def ensure(name: str, progress: Progress | None = None, rebuild: bool = False) -> tuple[Path, dict]:
    """The folder of teacher `name`, built now if missing, changed or damaged; and its report."""
    teacher = get(name)
    for parent in teacher.parents:  # first: their weights are part of this teacher's key
        ensure(parent, progress)
    folder = folder_for(teacher)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(folder.with_suffix(".lock")):  # one builder at a time; the others wait and reuse
        if not rebuild and _intact(folder, teacher):
            return folder, json.loads((folder / "report.json").read_text())
        if folder.exists():
            log.warning("teacher cache %s is incomplete, damaged or in an older format; "
                        "rebuilding it", folder)
            shutil.rmtree(folder)
        # an unfinished build (stopped by Ctrl-C, or killed) keeps its training state here,
        # and the next build continues from it
        unfinished = folder.with_name(folder.name + ".unfinished")
        if rebuild:
            shutil.rmtree(unfinished, ignore_errors=True)
        unfinished.mkdir(exist_ok=True)
        report = teacher.build(teacher.config, unfinished, progress)
        report |= {"teacher": name, "config": dataclasses.asdict(teacher.config),
                   "version": teacher.version, "sha256": sha256(unfinished / teacher.weights_file)}
        (unfinished / "report.json").write_text(json.dumps(report, indent=2))
        (unfinished / FIT_STATE).unlink(missing_ok=True)
        unfinished.rename(folder)
    return folder, report


def resolve_references(options: dict, progress: Progress | None = None) -> dict:
    """Replace each "teacher:NAME" option value by the options that load the built teacher."""
    out = dict(options)
    for key, value in options.items():
        if isinstance(value, str) and value.startswith(PREFIX):
            name = value[len(PREFIX):]
            folder, _ = ensure(name, progress)
            del out[key]
            out |= get(name).reference(folder)
    return out


def used_by(options: dict) -> dict:
    """The built teachers that `options` refer to: reference -> its cache folder and weights'
    SHA-256 (what a run's results record, so a number names the teacher it came from)."""
    out = {}
    for value in options.values():
        if isinstance(value, str) and value.startswith(PREFIX):
            folder = folder_for(get(value[len(PREFIX):]))
            out[value] = {"folder": str(folder),
                          "sha256": json.loads((folder / "report.json").read_text())["sha256"]}
    return out
