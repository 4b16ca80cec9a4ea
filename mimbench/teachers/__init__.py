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
import time
from pathlib import Path
from typing import Callable

from filelock import FileLock

from mimbench.errors import ConfigError, did_you_mean
from mimbench.teachers.base import FIT_STATE, Progress, Teacher, sha256
from mimbench.weights import cache_dir

log = logging.getLogger(__name__)
PREFIX = "teacher:"


def _registry() -> dict[str, Teacher]:
    from mimbench.teachers import clip, dvae, vqkd

    return {t.name: t for t in (*clip.TEACHERS, *dvae.TEACHERS, *vqkd.TEACHERS)}


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


def seeded(reference: str, seed: int) -> str:
    """`reference` built with `seed`, and so is the teacher it is built from:
    seeded('vqkd', 1) == 'vqkd?seed=1&teacher=clip?seed=1'. A seed the reference gives is kept,
    and so is a parent given with its own seed."""
    teacher = get(reference)
    name, _, given = reference.partition("?")
    options = dict(option.partition("=")[::2] for option in filter(None, given.split("&")))
    options.setdefault("seed", str(seed))
    for parent in teacher.parents:
        if "?" not in parent:
            options["teacher"] = seeded(parent, int(options["seed"]))
        elif "seed=" not in parent:
            raise ConfigError(f"teacher reference '{reference}' names its parent with options "
                              f"('{parent}') but no seed; add seed=N to it, or leave it plain.")
    return f"{name}?" + "&".join(f"{k}={v}" for k, v in options.items())


def cached(name: str) -> bool:
    teacher = get(name)
    folder = folder_for(teacher)
    return folder is not None and _intact(folder, teacher)


def ensure(name: str, progress: Progress | None = None, rebuild: bool = False) -> tuple[Path, dict]:
    """The folder of teacher `name`, built now if missing, changed or damaged; and its report
    (with the build's wall time and thread count)."""
    import torch

    teacher = get(name)
    parents = {parent: ensure(parent, progress) for parent in teacher.parents}  # first: their
    folder = folder_for(teacher)  # weights are part of this teacher's key
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
        loads = {parent: get(parent).reference(built) for parent, (built, _) in parents.items()}
        started = time.perf_counter()
        report = teacher.build(teacher.config, unfinished, progress, loads)
        report |= {"build_seconds": round(time.perf_counter() - started),  # a resumed build: since it resumed
                   "threads": torch.get_num_threads(),
                   "teacher": name, "config": dataclasses.asdict(teacher.config), "version": teacher.version,
                   "sha256": sha256(unfinished / teacher.weights_file),
                   "built_from": {parent: made["sha256"] for parent, (_, made) in parents.items()}}
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
    for value in references(options):
        folder = folder_for(get(value[len(PREFIX):]))
        out[value] = {"folder": str(folder),
                      "sha256": json.loads((folder / "report.json").read_text())["sha256"]}
    return out


def references(options: dict) -> list[str]:
    """Every "teacher:NAME" option value of a target's `options`, and of the targets nested in
    them (a list's {name: ...} entries: the multi target's teachers, each with its options)."""
    found: list[str] = []
    with_references_changed(options, lambda name: found.append(PREFIX + name) or name)  # the one walk
    return found


def with_references_changed(options: dict, change: Callable[[str], str]) -> dict:
    """`options` with each "teacher:NAME" option value, those of nested targets included (as
    `references` finds them), replaced by "teacher:" + change(NAME)."""
    def changed(value):
        if isinstance(value, str) and value.startswith(PREFIX):
            return PREFIX + change(value[len(PREFIX):])
        if isinstance(value, (list, tuple)):
            return type(value)(with_references_changed(entry, change) if isinstance(entry, dict) and "name" in entry
                               else entry for entry in value)
        return value

    return {key: changed(value) for key, value in options.items()}
