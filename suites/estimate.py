"""Compute estimates for `suite run --dry-run`: FLOPs counted by torch's FlopCounterMode on
the meta device (shapes only) for one image of each kind of work a run does (pre-training
step, frozen-feature forward, fine-tuning step, segmentation step and forward, decoder
included), times the images the schedules and datasets give; this machine's time at its
measured FLOP rate (see `machine_rate`); the teachers still to build, at their measured build
times. Answers in seconds."""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mimbench import config as cfg, teachers
from mimbench.data import DATASETS, build_dataset
from mimbench.optim import schedule
from mimbench.errors import MimbenchError
from mimbench.evals.finetune import finetune_steps
from mimbench.evals.segmentation import Segmenter, segmentation_source
from mimbench.masking import build_masking
from mimbench.student import build_encoder, build_student
from mimbench.suites.runner import threads_per_job
from mimbench.suites.schema import RunSpec
from mimbench.targets.base import TargetSpec
from mimbench.weights import cache_dir

# Sizes (and classes) assumed when a dataset is not on this machine: ImageNet-1k, ADE20K
IMAGENET = {"train": 1_281_167, "val": 50_000}
ADE20K = {"train": 20_210, "val": 2_000, "classes": 150}
GPU = {"name": "A100 (bf16 dense 312 TFLOP/s at 40 % utilisation)", "flops": 312e12 * 0.4}


def _student_step(student_cfg, mask_cfg, batch: int, device: str = "cpu"):
    """A student, a batch and a mask: one pre-training step's inputs at that shape."""
    with torch.device(device):
        student = build_student(student_cfg, TargetSpec("features", 512, student_cfg.grid, student_cfg.img_size))
        images = torch.randn(batch, 3, student_cfg.img_size, student_cfg.img_size)
    mask = build_masking(mask_cfg, student_cfg)(torch.Generator().manual_seed(0)).flatten()[None]
    return student, images, mask.expand(batch, -1).to(device)


def counted(work) -> float:
    """FLOPs of calling `work()`."""
    with FlopCounterMode(display=False) as counter:
        work()
    return float(counter.get_total_flops())


def step_flops_per_image(spec: RunSpec) -> float:
    """Forward + backward FLOPs of the student for one image (the MIM head included), counted
    on the meta device: shapes only, no arithmetic, so ViT-B/16 counts in a fraction of a second.
    An mae student picks its visible patches from the mask's values, which the meta device does
    not hold: it counts on the CPU (about a second at ViT-B/16)."""
    device = "cpu" if spec.config.student.style == "mae" else "meta"
    student, images, mask = _student_step(spec.config.student, spec.config.mask, 1, device)
    return counted(lambda: student(images, mask).square().mean().backward())


def eval_flops_per_image(config, seg_classes: int) -> dict[str, float]:
    """Per image, on the meta device, the evaluations' work on the student's encoder: its
    forward (frozen features, validation), its forward + backward (a fine-tuning step), and
    the segmentation model's forward + backward and forward at the training crop (encoder,
    pyramid, UperNet and auxiliary head)."""
    student, seg = config.student, config.segmentation
    size, crop = student.img_size, seg.crop or student.img_size
    with torch.device("meta"):
        encoder = build_encoder(student)
        images = torch.randn(2, 3, size, size)  # two: batch norm needs two values per channel
    figures = {"forward": counted(lambda: encoder.forward_features(images)) / 2,
               "train": counted(lambda: encoder.forward_features(images).sum().backward()) / 2}
    with torch.device("meta"):
        if crop != size:
            encoder.set_input_size(img_size=(crop, crop))
        model = Segmenter(encoder, seg_classes, seg.channels, seg.pool_scales, seg.aux_channels)
        crops = torch.randn(2, 3, crop, crop)

    def seg_step():
        logits, aux = model(crops)
        (logits.sum() + aux.sum()).backward()

    figures["seg_train"] = counted(seg_step) / 2
    figures["seg_forward"] = counted(lambda: model(crops)) / 2
    return figures


def rate_file(preset: str, threads: int) -> Path:
    """Where this machine's CPU rate for `preset` is kept, per thread count (CPU speed depends
    on it): a smoke step's rate (mostly per-step overhead) never stands in for a tiny one."""
    return cache_dir() / "bench" / f"cpu-{threads}-threads-{preset}.json"


def save_rate(flops_per_s: float, source: str, preset: str, threads: int | None = None) -> None:
    path = rate_file(preset, threads or torch.get_num_threads())
    path.parent.mkdir(parents=True, exist_ok=True)
    day = datetime.date.today().isoformat()
    path.write_text(json.dumps({"flops_per_s": flops_per_s, "source": f"{source}, {day}"}))


def machine_rate(preset: str, threads: int) -> tuple[float, str]:
    """FLOP/s of one run of `preset` on `threads` of this machine's CPU threads, and where the
    figure comes from: the last `mimbench bench --preset PRESET` run here on the CPU at that
    thread count (a whole pre-training step, teacher and optimizer included); failing that,
    the tiny preset's (the paper preset's larger matrices run at least as fast); failing
    that, a tiny student step timed now on that many threads and kept for the next dry run."""
    for name in dict.fromkeys((preset, "tiny")):
        path = rate_file(name, threads)
        if path.exists():
            record = json.loads(path.read_text())
            return record["flops_per_s"], f"{name} preset: {record['source']}"
    on_threads = f"{threads} thread{'s' if threads > 1 else ''}"
    save_rate(cpu_rate(threads), f"timed on a tiny student step on {on_threads}", "tiny", threads)
    return machine_rate(preset, threads)


# Seconds beyond the FLOPs at the machine's rate, which dominate small runs: the command's
# start (Python, torch), a run's set-up (models, data), and the segmentation evaluations'
# label-map data. Measured on the 2-core reference machine, 2026-12-04, with smoke suites of 4
# runs (docs/performance.md): 3.4 s with the linear probe, 3.4 s with linear, k-NN and
# fine-tuning, 29.6 s with both segmentation evaluations too.
START_S = 3.0
RUN_OVERHEAD_S = {"run": 0.7, "seg_linear": 3.0, "segmentation": 3.0}


def run_overhead(spec: RunSpec) -> float:
    return RUN_OVERHEAD_S["run"] + sum(RUN_OVERHEAD_S.get(name, 0.0) for name in spec.config.run.evals)


def cpu_rate(threads: int, repeats: int = 3) -> float:
    """FLOP/s that this machine reaches on a real mimbench step on `threads` threads: the tiny
    student at batch 32, the fastest of a few timed steps after a warm-up."""
    tiny = cfg.Config()
    student, images, mask = _student_step(tiny.student, tiny.mask, 32)
    own = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        flops = counted(lambda: student(images, mask).square().mean().backward())  # the warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            student(images, mask).square().mean().backward()
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(own)
    return flops / best


def dataset_size(name: str, options: dict, assumed: dict, split: str) -> tuple[int, int | None, bool]:
    """(images, classes, measured) of a dataset, without rendering or reading the images where
    the dataset can tell; `assumed`'s figures when it is not on this machine."""
    options = dict(options)
    try:
        if "cache" in inspect.signature(DATASETS.get(name).factory).parameters:
            options["cache"] = False  # the world: its length without rendering a scene
        dataset = build_dataset(name, **options)
        return len(dataset), getattr(dataset, "num_classes", None), True
    except MimbenchError:
        return assumed[split], assumed.get("classes"), False


def data_sizes(config) -> dict[str, tuple[int, int | None, bool]]:
    """The sizes of the datasets a run reads: pre-training's, and the evaluations' (the
    labelled classification data, the segmentation data) where its evaluations use them."""
    sizes = {"pretrain": dataset_size(config.data.name, config.data.options, IMAGENET, "train")}
    evals = set(config.run.evals)
    for split in ("train", "val"):
        if evals & {"linear", "knn", "attentive", "finetune"}:
            sizes[f"eval_{split}"] = dataset_size(config.eval_data.name, getattr(config.eval_data, split),
                                                  IMAGENET, split)
        if evals & {"seg_linear", "segmentation"}:
            sizes[f"seg_{split}"] = dataset_size(*segmentation_source(config, split), ADE20K, split)
    return sizes


def run_flops(spec: RunSpec, sizes: dict, pretrain: float, evals: dict[str, float]) -> dict[str, tuple[int, float]]:
    """(images, FLOPs) of each stage of a run. Sliding-window inference counts one window per
    image; a target's own network, evaluated in a reference row, counts as the student."""
    config = spec.config
    n = {key: size for key, (size, _, _) in sizes.items()}
    names = config.run.evals
    stages = {}
    if spec.pretrains:
        plan = schedule(config, n["pretrain"])
        images = plan["total_steps"] * plan["effective_batch"]
        stages["pretrain"] = (images, images * pretrain)
    features = 0  # images through the frozen encoder
    if "linear" in names or "knn" in names:  # one extraction, shared by the two probes
        features += n["eval_train"] + n["eval_val"]
    if "attentive" in names:  # its own extraction of the tokens (the probe's head: not counted)
        features += n["eval_train"] + n["eval_val"]
    if "seg_linear" in names:
        features += n["seg_train"] + n["seg_val"]
    if features:
        stages["probes"] = (features, features * evals["forward"])
    if "finetune" in names:
        f = config.finetune
        steps = finetune_steps(f, n["eval_train"])
        stages["finetune"] = (steps * f.batch_size + n["eval_val"],
                              steps * f.batch_size * evals["train"] + n["eval_val"] * evals["forward"])
    if "segmentation" in names:
        seg = config.segmentation
        stages["segmentation"] = (seg.steps * seg.batch_size + n["seg_val"],
                                  seg.steps * seg.batch_size * evals["seg_train"]
                                  + n["seg_val"] * evals["seg_forward"])
    return stages


def duration(hours: float) -> str:
    """A time to one significant figure, in the unit that reads best."""
    def rounded(x: float) -> str:
        return f"{float(f'{x:.1g}'):g}"

    if hours * 60 < 1:
        return "under a minute"
    if hours < 1:
        return f"about {rounded(hours * 60)} min"
    if hours < 48:
        return f"about {rounded(hours)} h"
    return f"about {rounded(hours / 24)} days"


def teachers_needed(runs: list[RunSpec]) -> list[str]:
    """The in-project teachers the runs load ("teacher:NAME" options), with the teachers those
    are built from, in build order."""
    names: list[str] = []

    def add(name: str) -> None:
        source = getattr(teachers.get(name).config, "teacher", None)  # vqkd distils the clip teacher
        if source:
            add(source)
        if name not in names:
            names.append(name)

    for spec in filter(lambda spec: spec.builds_target, runs):
        for value in teachers.references(spec.config.target.options):
            add(value[len(teachers.PREFIX):])
    return names


@dataclasses.dataclass
class Task:
    """A run as the runner schedules it: its seed, the runs it loads, the teachers it builds
    or waits for (in build order) and its own seconds."""

    id: str
    seed: int
    after: tuple[str, ...]
    teachers: list[str]
    seconds: float


def finish_time(tasks: list[Task], builds: dict[str, float], jobs: int) -> float:
    """Seconds until the last task ends with `jobs` at once, as the runner starts them: in
    seed order, each on the first free job once the runs it loads have ended. A task builds
    (`builds`: teacher -> seconds) the teachers it needs that no earlier task started, and
    waits for those another job is building."""
    free = [0.0] * jobs  # when each job is next free
    ends: dict[str, float] = {}  # task id -> when it ends
    ready_at: dict[str, float] = {}  # teacher -> when it is built
    priced = {t.id for t in tasks}
    waiting = sorted(tasks, key=lambda t: t.seed)
    while waiting:
        job = min(range(jobs), key=free.__getitem__)
        now = free[job]
        runnable = [t for t in waiting
                    if all(ends.get(a, float("inf")) <= now for a in t.after if a in priced)]
        if not runnable:  # every waiting task loads a run still going: idle until the next ends
            free[job] = min(end for end in ends.values() if end > now)
            continue
        task = runnable[0]
        waiting.remove(task)
        for name in task.teachers:
            if name not in ready_at:
                ready_at[name] = now + builds[name]
            now = max(now, ready_at[name])
        ends[task.id] = free[job] = now + task.seconds
    return max(ends.values(), default=0.0)


def estimate(runs: list[RunSpec], preset: str, jobs: int = 1) -> dict:
    """Per run: the images each stage processes and its FLOPs; totals as this machine's wall
    time with `jobs` runs at once (each at the measured FLOP rate of `preset`, the suite's, on
    its share of the threads; the teachers still to build at their measured build times, in
    the runs that first need them, as `finish_time` plays the runner) and as time on the
    reference GPU."""
    pretrain: dict[str, float] = {}  # student and mask -> FLOPs of a pre-training image
    evals: dict[str, dict] = {}  # student, segmentation and its classes -> FLOPs of eval images
    data: dict[str, dict] = {}  # datasets and evaluations -> their sizes
    rows, total = [], 0.0
    for spec in runs:
        c = spec.config
        data_key = repr((c.data, c.eval_data, c.segmentation, c.run.evals))
        if data_key not in data:
            data[data_key] = data_sizes(c)
        sizes = data[data_key]
        key = repr((c.student, c.mask))
        if key not in pretrain:
            pretrain[key] = step_flops_per_image(spec)
        seg_classes = sizes.get("seg_train", (0, None))[1] or ADE20K["classes"]
        eval_key = repr((c.student, c.segmentation, seg_classes))
        if eval_key not in evals:
            evals[eval_key] = eval_flops_per_image(c, seg_classes)
        stages = run_flops(spec, sizes, pretrain[key], evals[eval_key])
        flops = sum(f for _, f in stages.values())
        total += flops
        assumed = [name for name, (_, _, measured) in sizes.items() if not measured]
        rows.append({"id": spec.id, "images": sum(i for i, _ in stages.values()), "flops": flops,
                     "stages": stages, "data": assumed_note(assumed)})
    threads = threads_per_job(jobs)
    rate, rate_source = machine_rate(preset, threads)
    to_build = [name for name in teachers_needed(runs) if not teachers.cached(name)]
    build_hours = sum(teachers.get(name).build_minutes for name in to_build) / 60
    tasks = [Task(spec.id, spec.seed, spec.after, [n for n in teachers_needed([spec]) if n in to_build],
                  row["flops"] / rate + run_overhead(spec)) for spec, row in zip(runs, rows)]
    builds = {name: teachers.get(name).build_minutes * 60 for name in to_build}
    cpu_hours = (START_S + finish_time(tasks, builds, jobs)) / 3600
    gpu_hours = total / GPU["flops"] / 3600
    return {"runs": rows, "total_flops": total, "cpu_rate": rate, "cpu_rate_source": rate_source,
            "jobs": jobs, "threads_per_job": threads,
            "overhead_s": START_S + sum(run_overhead(spec) for spec in runs),
            "cpu_hours": cpu_hours, "cpu_time": duration(cpu_hours), "teachers_to_build": to_build,
            "teacher_build_time": duration(build_hours) if to_build else "none",
            "gpu": GPU["name"], "gpu_hours": gpu_hours, "gpu_time": duration(gpu_hours),
            "counted": "the student's forward and backward passes in pre-training, fine-tuning and "
                       "segmentation (UperNet included), its forward for the probes' features and "
                       "validation; not counted: the teacher's forward, the probes' solvers, data "
                       "loading"}


def assumed_note(assumed: list[str]) -> str:
    """Which sizes a row assumed, for the dry run's footnote ('measured' when none)."""
    notes = []
    if any(key.startswith(("pretrain", "eval")) for key in assumed):
        notes.append("ImageNet-1k sizes assumed (the folder is not on this machine)")
    if any(key.startswith("seg") for key in assumed):
        notes.append("ADE20K sizes assumed (its folder is not on this machine)")
    return "; ".join(notes) or "measured"
