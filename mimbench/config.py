"""Run configuration: frozen dataclasses whose defaults are the `tiny` preset.

Resolution order: defaults -> preset (with its per-target defaults, TARGET_DEFAULTS) -> YAML
file (--config) -> --target -> --set overrides; then the student style's masking
(STYLE_MASKING) for the mask keys the file and --set left. README (Presets) says the
same for users; tests/test_config.py checks every pair of stages.
`target` and `data` sections hold a registry name plus that entry's own options, checked
against the factory's signature so a typo gets a "did you mean".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mimbench.errors import ConfigError, did_you_mean
from mimbench.typed import coerce


@dataclass(frozen=True)
class StudentConfig:
    model: str = "vit_small_patch16_224"  # any timm ViT or BEiT name; the fields below override its shape
    img_size: int = 32
    patch_size: int = 4
    embed_dim: int = 128
    depth: int = 4
    num_heads: int = 4
    drop_path: float = 0.0
    layer_scale: float | None = None  # timm's init_values
    # sincos: MAE's fixed 2-D sin-cos, frozen in pre-training (on the world the tiny student
    # learns twice as much with it: docs/results/search_recipe); learn: timm's learned table
    pos_embed: Literal["learn", "sincos"] = "sincos"
    extra: dict = field(default_factory=dict)  # more timm kwargs, e.g. use_shared_rel_pos_bias
    # beit: every patch enters the encoder, masked ones as a mask token (BEiT, MVP);
    # mae: the encoder sees the visible patches only, a light decoder predicts the masked ones
    style: Literal["beit", "mae"] = "beit"
    decoder_depth: int = 2  # mae only (MAE at ViT-B: 8 blocks of 512 wide, 16 heads)
    decoder_dim: int = 64
    decoder_heads: int = 2

    @property
    def grid(self) -> tuple[int, int]:
        side = self.img_size // self.patch_size
        return (side, side)


@dataclass(frozen=True)
class MaskConfig:
    kind: Literal["block", "random"] = "block"
    ratio: float = 0.45  # fraction of patches masked; ignored when num_masked is set
    num_masked: int | None = None
    min_block: int = 4  # smallest block area in patches (BEiT: 16 on 14x14)
    min_aspect: float = 0.3

    def count(self, grid: tuple[int, int]) -> int:
        if self.num_masked is not None:
            return self.num_masked
        return round(self.ratio * grid[0] * grid[1])


@dataclass(frozen=True)
class TargetConfig:
    name: str = "clip"
    loss: Literal["cosine", "mse", "smooth_l1", "ce"] | None = None  # None: the target's default
    standardize: bool = True  # per-channel standardisation of feature targets over the batch
    cache: bool = False  # compute each image's target once (fixed views only; mimbench.targets.source)
    options: dict = field(default_factory=dict)  # the target's own options (layer, weights, ...)


@dataclass(frozen=True)
class DataConfig:
    name: str = "world"
    crop_scale: tuple[float, float] = (1.0, 1.0)  # random resized crop area range
    hflip: bool = False
    color_jitter: float = 0.0
    num_workers: int = 0
    # where JPEGs are decoded, cropped, jittered and resized: by PIL in the DataLoader workers,
    # or on the training device (mimbench.data.decode; a folder of JPEGs only)
    decode: Literal["workers", "device"] = "workers"
    options: dict = field(default_factory=dict)  # the dataset's own options (root, split, ...)


@dataclass(frozen=True)
class OptimConfig:
    # images per optimizer step over all processes and accumulation steps; when set, the run
    # is the same experiment on 1 or N processes: each process takes effective_batch / N, in
    # as few accumulation steps as keep each forward within batch_size (mimbench.optim.split_batch)
    effective_batch: int | None = None
    batch_size: int = 32  # images per forward on one device (with effective_batch: the most)
    accum_steps: int = 1  # without effective_batch: effective batch = batch_size x accum_steps x processes
    steps: int | None = 1300  # total optimizer steps; overrides epochs when set
    epochs: float | None = None
    lr: float = 2e-3
    lr_base_batch: int | None = None  # when set, lr scales linearly with effective batch / this
    min_lr: float = 1e-5
    warmup_steps: int | None = 50
    warmup_epochs: float | None = None
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = 3.0
    amp: Literal["none", "bf16"] = "none"  # student autocast
    # a finite loss with a non-finite gradient norm (bf16 overflow): stop the run, or skip the step
    nonfinite_grads: Literal["stop", "skip"] = "stop"


@dataclass(frozen=True)
class RunConfig:
    preset: str = "tiny"  # the preset the config was resolved from: its published references
    seed: int = 0
    device: str = "auto"
    teacher_amp: Literal["none", "bf16"] = "none"
    compile: bool = False  # torch.compile the student for pre-training (docs/performance.md)
    checkpoint_every: int = 200
    log_every: int = 10
    # run after pre-training (seg_linear: the world's frozen per-patch probe, not a paper protocol)
    evals: tuple[str, ...] = ("linear", "knn", "seg_linear", "finetune", "segmentation")
    # where the scalars go besides metrics.jsonl and results.json (mimbench.trackers); the
    # tensorboard and wandb extras install their packages
    loggers: tuple[Literal["jsonl", "tensorboard", "wandb"], ...] = ("jsonl",)


@dataclass(frozen=True)
class EvalDataConfig:
    """The labelled data of the evaluations: a dataset name, its train/val options."""

    name: str = "world"
    train: dict = field(default_factory=lambda: {"split": "train"})
    val: dict = field(default_factory=lambda: {"split": "val"})
    # classification views: shorter side resized to img_size / crop_pct, then the centre crop
    # (timm's eval transform; BEiT, MAE and DINO: 0.875, i.e. 256 then 224). The world's images
    # are square and already the student's size, so 1.0 leaves them as they are.
    crop_pct: float = 1.0
    num_workers: int = 0  # DataLoader processes making the evaluations' views (0: the main process)


@dataclass(frozen=True)
class LinearProbeConfig:
    protocol: Literal["lbfgs", "mae"] = "lbfgs"  # CLIP's logistic regression, or MAE's BN + linear
    # zero-based feature block, negative from the end; "all": one probe per block (the curve)
    block: int | Literal["all"] = -1
    pooling: Literal["avg", "cls"] = "avg"  # average of patch tokens (BEiT) or cls token (MAE)
    # lbfgs: L2 strength chosen on a held-out fraction of train, then refit on all of train
    regularisation: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    holdout: float = 0.2
    max_iter: int = 300
    # mae: BatchNorm without affine + linear, LARS or SGD with momentum, warmup then cosine
    optimizer: Literal["lars", "sgd"] = "sgd"
    epochs: int = 90
    warmup_epochs: int = 10
    batch_size: int = 256
    base_lr: float = 0.1  # lr = base_lr * batch_size / 256
    weight_decay: float = 0.0


@dataclass(frozen=True)
class AttentiveProbeConfig:
    """The attentive probe on the linear probe's block (its patch tokens, before pooling)."""

    heads: int = 4  # must divide the features' width
    # AdamW on the cached tokens, warmup then cosine
    lr: float = 1e-3
    weight_decay: float = 0.05
    # passes over the train split
    epochs: int = 20
    warmup_epochs: int = 2
    batch_size: int = 256


@dataclass(frozen=True)
class KnnConfig:
    """DINO's weighted k-NN on the linear probe's frozen features (its block and pooling)."""

    k: int = 20
    temperature: float = 0.07


@dataclass(frozen=True)
class FinetuneConfig:
    """Full fine-tuning for classification (BEiT's recipe at paper scale)."""

    steps: int | None = 300
    epochs: float | None = None
    batch_size: int = 32
    lr: float = 2e-3
    layer_decay: float = 0.65
    weight_decay: float = 0.05
    warmup_steps: int | None = 30
    warmup_epochs: float | None = None
    drop_path: float = 0.1
    label_smoothing: float = 0.1
    device_batch: int | None = None  # the most images per forward on the device (None: the batch)
    mixup: float = 0.0  # timm Mixup alpha; 0 turns it off
    cutmix: float = 0.0
    # BEiT's/MAE's training views (evals.data.FinetuneAugmentation: random resized crop, flip,
    # RandAugment, random erasing); off: the evaluation's centre views
    augment: bool = False
    # more labelled sets the fine-tuned classifier is tested on (robustness): name -> dataset
    # options ('name': the dataset, by default eval_data's), e.g. {imagenet_r: {name: folder,
    # root: /data/imagenet-r}} or, on the world, {shifted: {split: test, difficulty: 1}}
    extra_val: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SegmentationConfig:
    """BEiT's UperNet protocol: four evenly spaced blocks, a 4-level pyramid, UperNet + aux FCN."""

    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    layer_decay: float = 0.65
    weight_decay: float = 0.05
    warmup_steps: int = 30
    poly_power: float = 1.0
    drop_path: float = 0.1
    device_batch: int | None = None  # the most crops per forward on the device (None: the batch)
    channels: int = 32  # UperNet width (768 at paper scale); the head dominates a tiny step
    aux_channels: int | None = None  # the auxiliary FCN head's width; None: `channels` (mmseg: 256)
    aux_weight: float = 0.4
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    # training augmentation (BEiT/mmseg): rescale `scale` x ratio_range, crop `crop` with no
    # class over cat_max_ratio, flip, photometric distortion; off: whole images resized
    augment: bool = False
    scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    crop: int | None = None  # training crop and sliding-window side (None: whole image)
    stride: int | None = None
    dataset: str | None = None  # None: eval_data's dataset with label maps; or "ade20k"
    root: str | None = None  # the ADE20K folder (ADEChallengeData2016)


@dataclass(frozen=True)
class Config:
    """A run's whole config: what is pre-trained on what, how, and how it is evaluated."""

    # pre-training: the student, what it hides and predicts, from which images, how
    student: StudentConfig = field(default_factory=StudentConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)  # device, seed, logging, which evaluations
    # the evaluations: their labelled data, then each protocol
    eval_data: EvalDataConfig = field(default_factory=EvalDataConfig)
    linear: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    attentive: AttentiveProbeConfig = field(default_factory=AttentiveProbeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}
OPEN_SECTIONS = {"target", "data"}  # sections whose unknown keys are the entry's own options

PRESETS: dict[str, dict] = {
    # The embedded default: the world at 32 px, a 0.8M-parameter ViT, minutes on 2 CPU cores.
    # The world's views are fixed, so each image's target is computed once (target.cache).
    "tiny": {"target": {"cache": True}},
    # Seconds on a laptop; what the tests use.
    "smoke": {
        "student": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
        "mask": {"min_block": 2},
        "data": {"image_size": 32, "length": 512},
        "eval_data": {"train": {"split": "train", "image_size": 32, "length": 256},
                      "val": {"split": "val", "image_size": 32, "length": 128}},
        "linear": {"regularisation": (1e-4, 1e-2), "max_iter": 50},
        "finetune": {"steps": 3, "batch_size": 8, "warmup_steps": 1},
        "segmentation": {"steps": 3, "batch_size": 8, "warmup_steps": 1, "channels": 16},
        "optim": {"batch_size": 8, "steps": 6, "warmup_steps": 2, "lr": 1e-3},
        "run": {"checkpoint_every": 3, "log_every": 1},
    },
    # BEiT's ViT-B/16 pre-training recipe on ImageNet-1k (docs/protocols.md), 300 epochs.
    "paper": {
        "student": {"model": "beit_base_patch16_224", "img_size": 224, "patch_size": 16,
                    "embed_dim": 768, "depth": 12, "num_heads": 12, "drop_path": 0.1,
                    "layer_scale": 0.1, "pos_embed": "learn",
                    "decoder_depth": 8, "decoder_dim": 512, "decoder_heads": 16,
                    "extra": {"use_abs_pos_emb": False, "use_rel_pos_bias": False,
                              "use_shared_rel_pos_bias": True}},
        "mask": {"kind": "block", "num_masked": 75, "min_block": 16, "min_aspect": 0.3},
        "target": {"standardize": False},
        "data": {"name": "folder", "crop_scale": (0.08, 1.0), "hflip": True, "color_jitter": 0.4,
                 "num_workers": 10},
        "optim": {"effective_batch": 2048, "batch_size": 256, "steps": None, "epochs": 300, "lr": 1.5e-3,
                  "lr_base_batch": 2048, "min_lr": 1e-5, "warmup_steps": None, "warmup_epochs": 10,
                  "weight_decay": 0.05, "betas": (0.9, 0.999), "clip_grad": 3.0, "amp": "bf16"},
        "run": {"teacher_amp": "bf16", "checkpoint_every": 2000, "log_every": 50,
                "evals": ("linear", "knn", "finetune", "segmentation")},
        "eval_data": {"name": "folder", "train": {"root": None}, "val": {"root": None},
                      "crop_pct": 0.875, "num_workers": 10},
        # MAE's linear probe (docs/protocols.md)
        "linear": {"protocol": "mae", "optimizer": "lars", "pooling": "cls", "block": -1,
                   "batch_size": 16384,
                   "base_lr": 0.1, "epochs": 90, "warmup_epochs": 10, "weight_decay": 0.0},
        "finetune": {"steps": None, "epochs": 100, "batch_size": 1024, "lr": 4e-3,
                     "layer_decay": 0.65, "weight_decay": 0.05, "warmup_steps": None,
                     "warmup_epochs": 20, "drop_path": 0.1, "label_smoothing": 0.1,
                     "mixup": 0.8, "cutmix": 1.0, "augment": True, "device_batch": 256},
        "segmentation": {"steps": 160_000, "batch_size": 16, "lr": 1e-3, "layer_decay": 0.65,
                         "weight_decay": 0.05, "warmup_steps": 1500, "poly_power": 1.0,
                         "drop_path": 0.1, "channels": 768, "aux_channels": 256, "device_batch": 8,
                         "aux_weight": 0.4,
                         "pool_scales": (1, 2, 3, 6), "augment": True, "scale": (2048, 512),
                         "ratio_range": (0.5, 2.0), "cat_max_ratio": 0.75, "crop": 512, "stride": 341,
                         "dataset": "ade20k"},
    },
}

# Per preset and target: the options that make a target fit the preset's world and student.
# "teacher:NAME" is a teacher trained in-project (mimbench.teachers), built on first use.
TARGET_DEFAULTS: dict[str, dict[str, dict]] = {
    "tiny": {
        "clip": {"model": "teacher:clip", "weights": None, "layer": 2, "loss": "mse"},
        "dvae": {"weights": "teacher:dvae"},
        "vqkd": {"weights": "teacher:vqkd"},
    },
    "smoke": {
        "clip": {"model": "teacher:clip-smoke", "weights": None, "layer": 2, "loss": "mse"},
        "dvae": {"weights": "teacher:dvae-smoke"},
        "vqkd": {"weights": "teacher:vqkd-smoke"},
    },
}


# ---------------------------------------------------------------- typed values

def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _replace_section(section_obj, updates: dict, section: str):
    hints = _hints(type(section_obj))
    known = {f.name for f in dataclasses.fields(section_obj)} - {"options"}
    changes: dict[str, Any] = {}
    options = dict(getattr(section_obj, "options", {}))
    for key, value in updates.items():
        full = f"{section}.{key}"
        if key in known:
            changes[key] = coerce(value, hints[key], full)
        elif section in OPEN_SECTIONS:
            options[key] = value  # checked against the entry's factory in check_options
        else:
            raise ConfigError(f"unknown config key '{full}'{did_you_mean(key, known)}; "
                              f"'{section}' has: {', '.join(sorted(known))}.")
    if section in OPEN_SECTIONS:
        if "name" in changes and changes["name"] != section_obj.name:
            options = {k: v for k, v in options.items() if k in updates}  # options belong to a name
        changes["options"] = options
    return dataclasses.replace(section_obj, **changes)


def apply(config: Config, updates: dict) -> Config:
    """Return `config` with a nested mapping {section: {key: value}} applied."""
    if not isinstance(updates, dict):
        raise ConfigError(f"a config must be a mapping of sections, not {type(updates).__name__}.")
    changes = {}
    for section, values in updates.items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section '{section}'{did_you_mean(section, SECTIONS)}; "
                              f"sections are: {', '.join(SECTIONS)}.")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{section}' must be a mapping, not {values!r}.")
        changes[section] = _replace_section(getattr(config, section), values, section)
    return dataclasses.replace(config, **changes)


def split_override(text: str) -> tuple[list[str], Any]:
    """'eval_data.train.root=/d' -> (['eval_data', 'train', 'root'], '/d'); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise ConfigError(f"override '{text}' must look like section.key=value, e.g. optim.lr=1e-3 "
                          f"or eval_data.train.root=/data/train.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        value = _number_or_text(value)
    return parts, value


def nest(path: list[str], value: Any) -> dict:
    """['a', 'b'], 1 -> {'a': {'b': 1}}."""
    for part in reversed(path):
        value = {part: value}
    return value


def parse_override(text: str) -> dict:
    """'optim.lr=1e-3' -> {'optim': {'lr': 0.001}}; deeper keys nest further."""
    return nest(*split_override(text))


def merged(current: dict, update: dict) -> dict:
    """`current` with the nested mapping `update` merged in, key by key."""
    out = dict(current)
    for key, value in update.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _number_or_text(text: str):
    """YAML reads '1e-3' as a string; read it as the number a user meant."""
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        return text


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{path}' is not valid YAML ({e.problem}).") from None
    return data or {}


def resolve(preset: str = "tiny", config_file: str | Path | None = None, target: str | None = None,
            overrides: tuple[str, ...] = (), settings: dict | None = None, saved: dict | None = None) -> Config:
    """The one way a config is made (run, pretrain, eval, suites, bench). Layers, later over
    earlier: the preset's defaults, or a `saved` run's config.yaml; a config file; `settings`
    (nested section -> key -> value: a suite's set:, grid point and seed, or the shape a
    checkpoint was trained at); --set `overrides`. The run's target is the last --set
    target.name, else `target`, else the file's, else the preset's; its preset defaults and the
    student style's masking fill the keys nobody set. Every value is checked."""
    if saved is not None:  # a run's own config: its defaults were filled when it was made
        config = from_dict(saved)
        if config_file is not None:
            config = apply(config, load_yaml(config_file))
        return with_overrides(apply(config, settings or {}), overrides)
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'{did_you_mean(preset, PRESETS)}; "
                          f"presets are: {', '.join(PRESETS)}.")
    config = apply(Config(), PRESETS[preset])
    config = apply(config, {"run": {"preset": preset}})
    from_file = load_yaml(config_file) if config_file is not None else {}
    file_target = from_file.get("target") or {}
    parsed = [parse_override(o) for o in overrides]
    layers = [from_file, settings or {}, *parsed]

    def set_keys(section: str) -> set[str]:  # the keys of `section` that some layer gives
        return {key for layer in layers for key in (layer.get(section) or {})}

    names = [p["target"]["name"] for p in parsed if "name" in p.get("target", {})]
    name = names[-1] if names else target or file_target.get("name") or config.target.name
    # a file's target keys without a name apply to the run's target; with another name they
    # belong to that target, and a run of this one would silently drop them
    options = {k: v for k, v in file_target.items() if k != "name"}
    if file_target.get("name", name) != name and options:
        raise ConfigError(f"the config file's target section is for '{file_target['name']}' "
                          f"(with {', '.join(sorted(options))}), but this run's target is '{name}'; "
                          f"drop --target (or target.name), or the file's target section.")
    config = apply(config, {"target": {"name": name}})  # before the file: options follow the name
    config = apply(config, {**from_file, "target": options})
    defaults = TARGET_DEFAULTS.get(preset, {}).get(name, {})
    config = apply(config, {"target": {k: v for k, v in defaults.items() if k not in set_keys("target")}})
    config = with_overrides(apply(config, settings or {}), overrides)
    return with_style_masking(config, set_keys("mask"))


# Per student style: the masking it is trained with unless the file or --set chose one.
# mae: MAE's 75 % of patches, uniformly at random.
STYLE_MASKING = {"mae": {"kind": "random", "ratio": 0.75, "num_masked": None}}


def with_style_masking(config: Config, chosen: set[str]) -> Config:
    """`config` with its style's masking for every mask key not in `chosen` (those the user set)."""
    masking = STYLE_MASKING.get(config.student.style)
    if masking is None:
        return config
    config = apply(config, {"mask": {k: v for k, v in masking.items() if k not in chosen}})
    check_values(config)
    return config


def with_overrides(config: Config, overrides: tuple[str, ...]) -> Config:
    """--set section.key=value overrides applied in order, then every value checked."""
    for text in overrides:
        (section, key, *inner), value = split_override(text)
        if inner and section in SECTIONS:  # a key inside a mapping: merged into it
            current = to_dict(config)[section].get(key)
            if not isinstance(current, dict):
                raise ConfigError(f"override '{text}': '{section}.{key}' is not a mapping, so it "
                                  f"has no keys inside it to set.")
            value = merged(current, nest(inner, value))
        config = apply(config, {section: {key: value}})
    return check_options(config)


def check_options(config: Config) -> Config:
    """The `target` and `data` options, checked and converted by their registries (each a
    parameter of the entry's factory, typed by its annotation). Then every value is checked."""
    from mimbench.data import DATASETS
    from mimbench.targets import TARGETS

    for section, registry in (("target", TARGETS), ("data", DATASETS)):
        chosen = getattr(config, section)
        options = registry.checked_options(chosen.name, chosen.options, section)
        config = dataclasses.replace(config, **{section: dataclasses.replace(chosen, options=options)})
    extra = {}
    for key, options in config.finetune.extra_val.items():
        if not isinstance(options, dict):
            raise ConfigError(f"finetune.extra_val.{key} must be a mapping of dataset options (e.g. "
                              f"{{split: test, difficulty: 1}}), not {options!r}.")
        name = options.get("name", config.eval_data.name)
        rest = DATASETS.checked_options(name, {k: v for k, v in options.items() if k != "name"},
                                        f"finetune.extra_val.{key}")
        extra[key] = {"name": name, **rest}  # the dataset named, eval_data's by default
    config = dataclasses.replace(config, finetune=dataclasses.replace(config.finetune, extra_val=extra))
    check_values(config)
    return config


def check_values(config: Config) -> None:
    """Values that each type allows but no run can use, refused in one sentence before anything
    is built or written."""
    s, m, o = config.student, config.mask, config.optim
    if s.img_size % s.patch_size:
        raise ConfigError(f"student.img_size {s.img_size} is not a multiple of student.patch_size "
                          f"{s.patch_size}; pick sizes that tile the image.")
    cells = s.grid[0] * s.grid[1]
    if m.num_masked is None and not 0 < m.ratio < 1:
        raise ConfigError(f"mask.ratio must lie strictly between 0 and 1, not {m.ratio}.")
    if not 0 < m.count(s.grid) < cells:
        visible = " (student.style=mae encodes the visible patches only)" if s.style == "mae" else ""
        raise ConfigError(f"the mask covers {m.count(s.grid)} of the student's {cells} patches; "
                          f"mask at least 1 and fewer than {cells} (mask.ratio or "
                          f"mask.num_masked){visible}.")
    largest = (s.grid[0] - 1) * (s.grid[1] - 1)  # BEiT's blocks lie strictly inside the grid
    if m.kind == "block" and m.min_block > largest:
        raise ConfigError(f"mask.min_block {m.min_block} is larger than any block that fits the "
                          f"student's {s.grid[0]}x{s.grid[1]} patch grid (at most {largest} patches, "
                          f"(h-1) x (w-1)), so nothing would be masked; lower mask.min_block "
                          f"(BEiT: 16 on 14x14).")
    if s.style == "mae" and (s.decoder_depth < 1 or s.decoder_heads < 1
                             or s.decoder_dim % s.decoder_heads):
        raise ConfigError(f"the mae decoder needs at least one block and student.decoder_dim "
                          f"divisible by student.decoder_heads, not depth {s.decoder_depth}, "
                          f"width {s.decoder_dim}, {s.decoder_heads} heads.")
    if o.effective_batch is not None and o.accum_steps != 1:
        raise ConfigError(f"set optim.effective_batch ({o.effective_batch}) or optim.accum_steps "
                          f"({o.accum_steps}), not both: with effective_batch the accumulation "
                          f"follows from the number of processes and optim.batch_size.")
    positive = {"optim.effective_batch": o.effective_batch, "optim.batch_size": o.batch_size,
                "optim.accum_steps": o.accum_steps,
                "optim.steps": o.steps, "optim.epochs": o.epochs, "optim.lr": o.lr,
                "finetune.steps": config.finetune.steps, "finetune.batch_size": config.finetune.batch_size,
                "segmentation.steps": config.segmentation.steps,
                "segmentation.batch_size": config.segmentation.batch_size,
                "segmentation.crop": config.segmentation.crop,
                "segmentation.stride": config.segmentation.stride,
                "attentive.heads": config.attentive.heads, "attentive.epochs": config.attentive.epochs,
                "attentive.batch_size": config.attentive.batch_size}
    for key, value in positive.items():
        if value is not None and value <= 0:
            raise ConfigError(f"{key} must be positive, not {value}.")
    from mimbench.trackers import check_installed

    check_installed(config.run.loggers)
    if {"segmentation", "seg_linear"} & set(config.run.evals):
        from mimbench.data import check_label_maps

        check_label_maps(config)
    seg = config.segmentation
    if seg.crop is not None and seg.crop < s.patch_size:
        raise ConfigError(f"segmentation.crop {seg.crop} is smaller than a patch "
                          f"({s.patch_size} px); BEiT crops 512 with patch 16.")
    if seg.crop is not None and seg.stride is not None and seg.stride > seg.crop:
        raise ConfigError(f"segmentation.stride {seg.stride} is larger than segmentation.crop "
                          f"{seg.crop}: the sliding window would skip pixels (BEiT: 341 of 512).")


# ---------------------------------------------------------------- (de)serialisation

def to_dict(config: Config) -> dict:
    out = {}
    for section in SECTIONS:
        values = dataclasses.asdict(getattr(config, section))
        options = values.pop("options", {})
        out[section] = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
        out[section].update(options)
    return out


def from_dict(data: dict) -> Config:
    return apply(Config(), data)


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def diff(config: Config, base: Config | None = None) -> dict:
    """The keys of `config` that differ from `base` (default: the tiny defaults), flattened."""
    a, b = to_dict(config), to_dict(base or Config())
    return {f"{s}.{k}": v for s in a for k, v in a[s].items() if b[s].get(k, object()) != v}


def differing_keys(a: Config, b: Config) -> list[str]:
    """The section.key names whose values differ between two configs, sorted."""
    return sorted(set(diff(a, b)) | set(diff(b, a)))


def identity(config: Config) -> str:
    """A short SHA-256 of the whole resolved config: what a run directory's numbers come from."""
    text = json.dumps(to_dict(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
