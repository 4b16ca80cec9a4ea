"""Suite files: a base preset, a grid of runs (targets x seeds x overrides), the evaluations,
and expected results. Everything is checked before any run starts."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from mimbench import config as cfg
from mimbench.errors import ConfigError, did_you_mean

SHIPPED = Path(__file__).parent
RANDOM_INIT = "random"  # the floor: the student's architecture, no pre-training
SUPERVISED = "supervised"  # that architecture trained with labels, same budget
TEACHER = "teacher"  # the reference: the suite's teacher target's own network (frozen in probes)
BASELINES = (RANDOM_INIT, SUPERVISED, TEACHER)
KEYS = {"name", "description", "preset", "targets", "seeds", "grid", "set", "evals", "compare",
        "expect", "teacher", "teacher_set", "variants", "primary", "teachers_per_seed"}
# Per evaluation, the metrics a report tables, headline first; a metric no run has is skipped
# (mIoU_objects exists where the data has a background class: the world, not ADE20K).
METRICS = {"linear": ("linear_probe.top1",), "knn": ("knn.top1",), "attentive": ("attentive_probe.top1",),
           "finetune": ("finetune.top1",),
           "segmentation": ("segmentation.mIoU_objects", "segmentation.mIoU"),
           "seg_linear": ("segmentation_linear.mIoU_objects", "segmentation_linear.mIoU")}
ALL_METRICS = [m for names in METRICS.values() for m in names]


@dataclass(frozen=True)
class Expectation:
    target: str
    metric: str  # e.g. segmentation.mIoU
    value: float
    tolerance: float


@dataclass(frozen=True)
class RunSpec:
    """One run of a suite: a target, a seed, a point of the grid, and its resolved config."""

    id: str
    target: str
    seed: int
    point: dict  # the grid keys this run's config takes (a reference row: those that affect it)
    config: cfg.Config
    points: tuple = ()  # every grid point the run stands for (a reference row can stand for several)
    after: tuple[str, ...] = ()  # the runs whose students this run's target loads ({run:ROW})

    @property
    def pretrains(self) -> bool:
        return self.target not in (RANDOM_INIT, TEACHER)

    @property
    def builds_target(self) -> bool:
        """Whether the run builds its config's target (the random-init and supervised rows
        resolve the preset's target but never read it)."""
        return self.target not in (RANDOM_INIT, SUPERVISED)

    @property
    def source(self) -> str | None:
        """What the evaluations read when nothing is pre-trained (None: the run's folder)."""
        if self.target == RANDOM_INIT:
            return "timm:random"
        if self.target == TEACHER:
            return f"target:{self.config.target.name}"
        return None


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    preset: str
    targets: tuple[str, ...]
    seeds: tuple[int, ...]
    grid: dict | tuple  # {key: values} (their product) or points, each a tuple of (key, value)
    set: dict
    evals: tuple[str, ...]
    compare: tuple[tuple[str, str], ...]  # the pairs whose gaps head the report
    expect: tuple[Expectation, ...]
    source: Path
    teacher: str = "clip"  # the feature target whose own features the 'teacher' row evaluates
    teacher_set: dict = field(default_factory=dict)  # settings of the teacher row only
    # rows of a target with settings of their own: name -> (target, {key: value}); "{seed}" in
    # a value is the run's seed, so that each seed builds its own teacher
    variants: dict = field(default_factory=dict)
    # the claims the suite exists to test, as (a, b, metric): "a above b on metric"; the report
    # corrects their p-values for multiplicity (Holm) within this family only
    primary: tuple[tuple[str, str, str], ...] = ()
    # each seed builds its own in-project teachers (teachers.seeded), so that the intervals hold
    # teacher-build variance as well as the student's
    teachers_per_seed: bool = False

    def points(self) -> list[dict]:
        """The grid's points: the product of a mapping's value lists, or a list's own points."""
        if isinstance(self.grid, tuple):
            return [dict(p) for p in self.grid]
        keys = list(self.grid)
        return [dict(zip(keys, values)) for values in itertools.product(*self.grid.values())]

    def runs(self) -> list[RunSpec]:
        twice = repeated(json.dumps(p, sort_keys=True) for p in self.points())
        if twice:
            raise ConfigError(f"suite '{self.name}' lists the grid point {twice} twice; give "
                              f"each grid point different values.")
        runs = [run for target in self.targets for run in self.runs_of(target)]
        twice = repeated(r.id for r in runs)
        if twice:
            raise ConfigError(f"suite '{self.name}' names two runs '{twice}'; give each grid "
                              f"point different values.")
        return runs

    def runs_of(self, row: str) -> list[RunSpec]:
        """A row's runs. A reference row runs once per seed for all grid points that differ only
        in keys it does not read (a random-init row ignores mask.ratio)."""
        shares: dict[str, list[dict]] = {}
        for point in self.points():
            own = {k: v for k, v in point.items() if affects(row, k)}
            shares.setdefault(json.dumps(own, sort_keys=True), []).append(point)
        runs = []
        for key, stands_for in shares.items():
            point = json.loads(key)
            label = "-".join(f"{k.split('.')[-1]}{safe_name(v)}" for k, v in point.items())
            for seed in self.seeds:
                target, own = self.row_settings(row, seed)
                own = {k: self.run_reference(row, v, label, seed) for k, v in own.items()}
                chosen = nested({**self.set, **point, **own, "run.seed": seed, "run.evals": self.evals})
                config = cfg.resolve(self.preset, target=target, settings=chosen)
                if self.teachers_per_seed:
                    config = with_seeded_teachers(config, seed)
                after = tuple(m.group(1) for v in own.values() if (m := RUN_REFERENCE.match(str(v))))
                runs.append(RunSpec(run_id(row, label, seed), row, seed, point, config, tuple(stands_for), after))
        return runs

    def run_reference(self, row: str, value, label: str, seed: int):
        """'{run:ROW}' -> '{run:ID}', ID being ROW's run at the same grid point and seed; ROW
        must be a pre-training row listed before `row`, so that it has run first."""
        match = RUN_REFERENCE.match(str(value))
        if not match:
            return value
        earlier = [t for t in self.targets[:self.targets.index(row)] if t not in BASELINES]
        if match.group(1) not in earlier:
            raise ConfigError(f"suite row '{row}' loads '{value}', but '{match.group(1)}' is not a "
                              f"pre-training row listed before it (listed before: "
                              f"{', '.join(earlier) or 'none'}); list the teacher's row first.")
        return f"{{run:{run_id(match.group(1), label, seed)}}}"

    def row_settings(self, row: str, seed: int) -> tuple[str | None, dict]:
        """The target a row's runs resolve (None: the preset's, which the random-init and
        supervised rows do not read) and the row's own settings at `seed`."""
        if row == TEACHER:
            return self.teacher, self.teacher_set
        if row in (RANDOM_INIT, SUPERVISED):
            return None, {}
        target, own = self.variants.get(row, (row, {}))
        return target, {k: with_seed(v, seed) for k, v in own.items()}


# The config sections a reference row does not read: its runs are shared across grid points
# that differ only there. random init: no pre-training at all; the teacher row: no student
# pre-training; the supervised row: trained on labels, with no target or mask.
IGNORED_SECTIONS = {RANDOM_INIT: {"mask", "target", "data", "optim"},
                    TEACHER: {"mask", "data", "optim"},
                    SUPERVISED: {"mask", "target"}}


RUN_REFERENCE = re.compile(r"^\{run:([^}]+)\}$")  # a variant's value naming another row's student


def run_id(row: str, label: str, seed: int) -> str:
    return "-".join(filter(None, [row, label, f"s{seed}"]))


def with_seed(value, seed: int):
    """A variant's value at `seed`: '{seed}' alone is the seed itself, inside a text it is its
    digits; in lists and mappings too (a multi target's teachers)."""
    if value == "{seed}":
        return seed
    if isinstance(value, dict):
        return {key: with_seed(item, seed) for key, item in value.items()}
    if isinstance(value, list):
        return [with_seed(item, seed) for item in value]
    return value.replace("{seed}", str(seed)) if isinstance(value, str) else value


def with_run_folders(spec: RunSpec, runs: Path) -> RunSpec:
    """`spec` with each '{run:ID}' target option replaced by that run's folder under `runs`."""
    options = {k: str(runs / m.group(1)) if isinstance(v, str) and (m := RUN_REFERENCE.match(v)) else v
               for k, v in spec.config.target.options.items()}
    return replace(spec, config=replace(spec.config, target=replace(spec.config.target, options=options)))


def with_seeded_teachers(config: cfg.Config, seed: int) -> cfg.Config:
    """`config` with every in-project teacher its target loads ('teacher:NAME' options, those
    of a multi target's teachers included) built with `seed`, and the teachers those are
    built from."""
    from mimbench import teachers

    options = teachers.with_references_changed(config.target.options, lambda name: teachers.seeded(name, seed))
    return replace(config, target=replace(config.target, options=options))


def repeated(items) -> str | None:
    """The first (in sorted order) of the items that occur more than once; None if none does."""
    items = list(items)
    twice = sorted({i for i in items if items.count(i) > 1})
    return twice[0] if twice else None


def affects(target: str, key: str) -> bool:
    """Whether grid key `key` (section.name) changes a run of `target`."""
    return key.partition(".")[0] not in IGNORED_SECTIONS.get(target, ())


def safe_name(value) -> str:
    """A grid value as a run-directory name's part: letters, digits, '.', '_', '+' and '-'."""
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "_"


def nested(flat: dict) -> dict:
    """{'optim.lr': 1e-3} -> {'optim': {'lr': 1e-3}}, naming a key without a section."""
    out: dict[str, dict] = {}
    for key, value in flat.items():
        section, dot, name = key.partition(".")
        if not dot or not name:
            raise ConfigError(f"suite key '{key}' must look like section.key, e.g. mask.ratio.")
        out.setdefault(section, {})[name] = value
    return out


def shipped() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def locate(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"suite file '{path}' does not exist.")
        return path
    if (SHIPPED / f"{name_or_path}.yaml").is_file():
        return SHIPPED / f"{name_or_path}.yaml"
    raise ConfigError(f"unknown suite '{name_or_path}'{did_you_mean(name_or_path, shipped())}; "
                      f"shipped suites: {', '.join(shipped())}, or give a path to a .yaml file.")


def _list(data: dict, key: str, default=None) -> list:
    value = data.get(key, default)
    if not isinstance(value, list) or not value:
        raise ConfigError(f"suite '{key}' must be a non-empty list, not {value!r}.")
    return value


def load(name_or_path: str, preset: str | None = None, overrides: tuple[str, ...] = ()) -> Suite:
    """Read and check a suite; every run's config is resolved here, so a bad key, target or
    value fails before anything runs. `preset` replaces the suite's preset and `overrides`
    (section.key=value) are added to its `set:` for every run; the suite's name then says so
    (name-smoke, name-set<hash>), so its folder and report are its own."""
    from mimbench.evals import RESULT_NAMES

    path = locate(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"suite file '{path}' is not valid YAML ({e.problem}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"suite file '{path}' must be a mapping of {', '.join(sorted(KEYS))}.")
    refuse_unknown(data, sorted(KEYS), "suite key", path)
    variants = _variants(data.get("variants") or {}, path)
    targets = _targets(data, path, variants)
    seeds = _list(data, "seeds", [0])
    if not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"suite seeds must be integers, not {seeds!r}.")
    grid = _grid(data.get("grid") or {})
    evals = _list(data, "evals", list(RESULT_NAMES))
    pairs = _pairs(data.get("compare") or [], targets)
    expect = tuple(_expectation(e, targets) for e in data.get("expect") or [])
    name, settings = str(data.get("name", path.stem)), dict(data.get("set") or {})
    if preset is not None and preset != data.get("preset", "tiny"):
        name = f"{name}-{preset}"
        expect = ()  # a suite's expectations are its own preset's published figures
    if overrides:
        evals = _apply_overrides(overrides, settings, evals)
        name = f"{name}-set{hashlib.sha256(' '.join(overrides).encode()).hexdigest()[:6]}"
    refuse_unknown(evals, list(RESULT_NAMES), "evaluation", path)
    suite = Suite(name=name, description=str(data.get("description", "")),
                  preset=preset or str(data.get("preset", "tiny")), targets=tuple(targets),
                  seeds=tuple(seeds), grid=grid, set=settings,
                  evals=tuple(evals), compare=tuple(tuple(p) for p in pairs), expect=expect,
                  source=path, teacher=str(data.get("teacher", "clip")),
                  teacher_set=dict(data.get("teacher_set") or {}), variants=variants,
                  primary=_primary(data.get("primary"), targets, evals),
                  teachers_per_seed=_flag(data, "teachers_per_seed"))
    suite.runs()  # resolves every config: unknown keys and bad values fail here
    return suite


def _variants(variants: dict, path: Path) -> dict:
    """variants: {name: {target: T, set: {key: value}}} -> {name: (T, settings)}."""
    from mimbench.targets import TARGETS

    out = {}
    for name, spec in variants.items():
        if not isinstance(spec, dict) or set(spec) - {"target", "set"} or "target" not in spec:
            raise ConfigError(f"suite variant '{name}' in '{path}' must be a mapping with target: and "
                              f"set: (e.g. {{target: clip, set: {{target.model: teacher:supervised}}}}), "
                              f"not {spec!r}.")
        if name in TARGETS.names() or name in BASELINES:
            raise ConfigError(f"suite variant '{name}' in '{path}' is named like a target or a "
                              f"reference row; give it a name of its own, e.g. {spec.get('target')}-mine.")
        if spec["target"] not in TARGETS.names():
            raise ConfigError(f"suite variant '{name}' names unknown target '{spec['target']}'"
                              f"{did_you_mean(str(spec['target']), TARGETS.names())}.")
        out[str(name)] = (spec["target"], dict(spec.get("set") or {}))
    return out


def _targets(data: dict, path: Path, variants: dict) -> list:
    from mimbench.targets import TARGETS

    targets = _list(data, "targets")
    refuse_unknown(targets, [*TARGETS.names(), *BASELINES, *variants], "target", path)
    return targets


def refuse_unknown(items, known: list[str], what: str, path: Path) -> None:
    """One sentence, with did-you-mean, for the first of `items` not in `known`."""
    for item in items:
        if item not in known:
            raise ConfigError(f"unknown {what} '{item}'{did_you_mean(str(item), known)} in suite "
                              f"'{path}'; the {what}s are: {', '.join(known)}.")


def _grid(grid):
    """A suite's grid: {key: values} (their product) or a list of points, as tuples."""
    if isinstance(grid, list):  # explicit points, e.g. [{}, {student.img_size: 64, ...}]
        if not all(isinstance(p, dict) for p in grid):
            raise ConfigError(f"a suite 'grid' list must hold mappings of config keys to values "
                              f"({{}} is the preset's defaults), not {grid!r}.")
        grid = tuple(tuple(p.items()) for p in grid)
    elif isinstance(grid, dict):
        for key in grid:
            _list(grid, key)
        grid = {k: tuple(v) for k, v in grid.items()}
    else:
        raise ConfigError(f"suite 'grid' must map config keys to lists of values, or list points, "
                          f"not {grid!r}.")
    return grid


def _pairs(compare, targets: list) -> list:
    """The suite's compared pairs: [a, b] or a list of such pairs, each of its targets."""
    pairs = [compare] if compare and all(isinstance(t, str) for t in compare) else compare
    if not isinstance(pairs, list) or any(not isinstance(p, list) or len(p) != 2
                                          or any(t not in targets for t in p) for p in pairs):
        raise ConfigError(f"suite 'compare' must name two of its targets, or list such pairs "
                          f"(e.g. [[clip, dvae], [clip, random]]), not {compare!r}.")
    return pairs


def _primary(primary, targets: list, evals: list) -> tuple:
    """primary: {compare: pairs, metrics: [...]} -> every (a, b, metric) of the family."""
    if primary is None:
        return ()
    metrics = [m for e in evals for m in METRICS[e]]
    if not isinstance(primary, dict) or set(primary) != {"compare", "metrics"} \
            or not isinstance(primary["metrics"], list) or not primary["metrics"]:
        raise ConfigError(f"suite 'primary' must be a mapping of compare (pairs of targets) and "
                          f"metrics (a list, among {', '.join(metrics)}), not {primary!r}.")
    for metric in primary["metrics"]:
        if metric not in metrics:
            raise ConfigError(f"primary metric '{metric}'{did_you_mean(str(metric), metrics)} is not "
                              f"measured by the suite's evaluations; they measure: {', '.join(metrics)}.")
    pairs = _pairs(primary["compare"], targets)
    return tuple((a, b, metric) for metric in primary["metrics"] for a, b in pairs)


def _flag(data: dict, key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"suite '{key}' must be true or false, not {value!r}.")
    return value


def _apply_overrides(overrides: tuple[str, ...], settings: dict, evals: list) -> list:
    """Add section.key=value overrides to the suite's `set:` (run.evals replaces its evals,
    returned); run.seed is the suite's seeds' to set."""
    for text in overrides:
        keys, value = cfg.split_override(text)
        if len(keys) != 2 or ".".join(keys) == "run.seed":
            raise ConfigError(f"suite override '{text}' must look like section.key=value, and "
                              f"not set run.seed (the suite's seeds: list sets it).")
        if ".".join(keys) == "run.evals":  # what the suite's evals: list sets
            evals = _list({"evals": value}, "evals")
        else:
            settings[".".join(keys)] = value
    return evals


def _expectation(entry: Any, targets: list) -> Expectation:
    if not isinstance(entry, dict) or set(entry) != {"target", "metric", "value", "tolerance"}:
        raise ConfigError(f"each suite expectation needs target, metric, value and tolerance, "
                          f"not {entry!r}.")
    if entry["target"] not in targets:
        raise ConfigError(f"expectation for target '{entry['target']}', which the suite does not run.")
    if entry["metric"] not in ALL_METRICS:
        raise ConfigError(f"unknown metric '{entry['metric']}'; metrics are: {', '.join(ALL_METRICS)}.")
    return Expectation(entry["target"], entry["metric"], float(entry["value"]), float(entry["tolerance"]))
