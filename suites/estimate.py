"""Compute estimates for `suite run --dry-run`: the student's training FLOPs, counted by
torch's FlopCounterMode on one real step, times the images the schedule will show it; this
machine's time at its measured FLOP rate (see `machine_rate`); the teachers still to build,
at their measured build times. Answers in seconds."""

from __future__ import annotations

import datetime
import inspect
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mimbench import config as cfg, teachers
from mimbench.data import DATASETS, build_dataset
from mimbench.engine import schedule
from mimbench.errors import MimbenchError
from mimbench.masking import build_masking
from mimbench.student import build_student
from mimbench.suites.schema import RunSpec
from mimbench.targets.base import TargetSpec
from mimbench.weights import cache_dir

IMAGENET_TRAIN = 1_281_167  # images per epoch when the data folder is not on this machine
GPU = {"name": "A100 (bf16 dense 312 TFLOP/s at 40 % utilisation)", "flops": 312e12 * 0.4}


def _student_step(student_cfg, mask_cfg, batch: int, device: str = "cpu"):
    """A student, a batch and a mask: one pre-training step's inputs at that shape."""
    with torch.device(device):
        student = build_student(student_cfg, TargetSpec("features", 512, student_cfg.grid, student_cfg.img_size))
        images = torch.randn(batch, 3, student_cfg.img_size, student_cfg.img_size)
    mask = build_masking(mask_cfg, student_cfg)(torch.Generator().manual_seed(0)).flatten()[None]
    return student, images, mask.expand(batch, -1).to(device)


def step_flops_per_image(spec: RunSpec) -> float:
    """Forward + backward FLOPs of the student for one image (the MIM head included), counted
    on the meta device: shapes only, no arithmetic, so ViT-B/16 counts in a fraction of a second.
    An mae student picks its visible patches from the mask's values, which the meta device does
    not hold: it counts on the CPU (about a second at ViT-B/16)."""
    device = "cpu" if spec.config.student.style == "mae" else "meta"
    student, images, mask = _student_step(spec.config.student, spec.config.mask, 1, device)
    with FlopCounterMode(display=False) as counter:
        student(images, mask).square().mean().backward()
    return float(counter.get_total_flops())


def rate_file() -> Path:
    """Where this machine's CPU rate is kept, per thread count (CPU speed depends on it)."""
    return cache_dir() / "bench" / f"cpu-{torch.get_num_threads()}-threads.json"


def save_rate(flops_per_s: float, source: str) -> None:
    path = rate_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    day = datetime.date.today().isoformat()
    path.write_text(json.dumps({"flops_per_s": flops_per_s, "source": f"{source}, {day}"}))


def machine_rate() -> tuple[float, str]:
    """FLOP/s of this machine's CPU and where the figure comes from: the last `mimbench bench`
    run here on the CPU (a whole pre-training step, teacher and optimizer included); failing
    that, a tiny student step timed now and kept for the next dry run."""
    path = rate_file()
    if path.exists():
        record = json.loads(path.read_text())
        return record["flops_per_s"], record["source"]
    save_rate(cpu_rate(), "timed on a tiny student step")
    return machine_rate()


def cpu_rate(repeats: int = 3) -> float:
    """FLOP/s that this machine reaches on a real mimbench step: the tiny student at batch 32,
    the fastest of a few timed steps after a warm-up."""
    tiny = cfg.Config()
    student, images, mask = _student_step(tiny.student, tiny.mask, 32)
    with FlopCounterMode(display=False) as counter:
        student(images, mask).square().mean().backward()  # the warm-up, counted
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        student(images, mask).square().mean().backward()
        best = min(best, time.perf_counter() - start)
    return counter.get_total_flops() / best


def dataset_size(spec: RunSpec) -> tuple[int, str]:
    """Images per epoch, without rendering or reading the images where the dataset can tell."""
    data = spec.config.data
    options = dict(data.options)
    try:
        if "cache" in inspect.signature(DATASETS.get(data.name).factory).parameters:
            options["cache"] = False  # the world: its length without rendering a scene
        return len(build_dataset(data.name, **options)), "measured"
    except MimbenchError:
        return IMAGENET_TRAIN, "ImageNet-1k train size assumed"


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

    for spec in runs:
        for value in spec.config.target.options.values():
            if isinstance(value, str) and value.startswith(teachers.PREFIX):
                add(value[len(teachers.PREFIX):])
    return names


def estimate(runs: list[RunSpec]) -> dict:
    """Per run: images seen in pre-training, fine-tuning and segmentation, FLOPs; totals as
    this machine's time (at its measured FLOP rate, plus the teachers still to build) and as
    time on the reference GPU."""
    per_image: dict[str, float] = {}  # student shape -> FLOPs
    sizes: dict[str, tuple[int, str]] = {}
    rows, total = [], 0.0
    for spec in runs:
        key = repr((spec.config.student, spec.config.mask))
        if key not in per_image:
            per_image[key] = step_flops_per_image(spec)
        data_key = repr(spec.config.data)
        if data_key not in sizes:
            sizes[data_key] = dataset_size(spec)
        size, size_note = sizes[data_key]
        plan = schedule(spec.config, size)
        images = plan["total_steps"] * plan["effective_batch"] if spec.pretrains else 0
        f = spec.config.finetune
        ft_steps = f.steps if f.steps is not None else round((f.epochs or 0) * size / f.batch_size)
        if "finetune" in spec.config.run.evals:
            images += ft_steps * f.batch_size
        flops = images * per_image[key]
        seg = spec.config.segmentation
        if "segmentation" in spec.config.run.evals:  # the encoder's steps, at the crop's token count
            tokens = (seg.crop / spec.config.student.img_size) ** 2 if seg.crop else 1.0
            images += seg.steps * seg.batch_size
            flops += seg.steps * seg.batch_size * tokens * per_image[key]
        total += flops
        rows.append({"id": spec.id, "images": images, "flops": flops, "data": size_note})
    rate, rate_source = machine_rate()
    to_build = [name for name in teachers_needed(runs) if not teachers.cached(name)]
    build_hours = sum(teachers.get(name).build_minutes for name in to_build) / 60
    cpu_hours = total / rate / 3600 + build_hours
    gpu_hours = total / GPU["flops"] / 3600
    return {"runs": rows, "total_flops": total, "cpu_rate": rate, "cpu_rate_source": rate_source,
            "cpu_hours": cpu_hours, "cpu_time": duration(cpu_hours), "teachers_to_build": to_build,
            "teacher_build_time": duration(build_hours) if to_build else "none",
            "gpu": GPU["name"], "gpu_hours": gpu_hours, "gpu_time": duration(gpu_hours),
            "counted": "student forward+backward in pre-training, fine-tuning and segmentation (its "
                       "crops counted by their patch count); the teacher's forward, the probes' "
                       "features and the segmentation decoder are not counted"}
