"""Compute estimates for `suite run --dry-run`: the student's training FLOPs, counted by
torch's FlopCounterMode on one real step, times the images the schedule will show it."""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from mimbench.data import build_dataset
from mimbench.engine import schedule
from mimbench.errors import MimbenchError
from mimbench.masking import build_masking
from mimbench.student import Student
from mimbench.suites.schema import RunSpec
from mimbench.targets.base import TargetSpec

IMAGENET_TRAIN = 1_281_167  # images per epoch when the data folder is not on this machine
GPU = {"name": "A100 (bf16 dense 312 TFLOP/s at 40 % utilisation)", "flops": 312e12 * 0.4}


def step_flops_per_image(spec: RunSpec) -> float:
    """Forward + backward FLOPs of the student for one image (the MIM head included)."""
    s = spec.config.student
    student = Student(s, TargetSpec("features", 512, s.grid, s.img_size))
    mask = build_masking(spec.config.mask, s.grid)(torch.Generator().manual_seed(0)).flatten()[None]
    with FlopCounterMode(display=False) as counter:
        student(torch.randn(1, 3, s.img_size, s.img_size), mask).square().mean().backward()
    return float(counter.get_total_flops())


def dataset_size(spec: RunSpec) -> tuple[int, str]:
    data = spec.config.data
    try:
        return len(build_dataset(data.name, **data.options)), "measured"
    except MimbenchError:
        return IMAGENET_TRAIN, "ImageNet-1k train size assumed"


def matmul_rate(size: int = 1024, repeats: int = 5) -> float:
    """This machine's float32 matmul FLOP/s, the best of a few tries."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def estimate(runs: list[RunSpec]) -> dict:
    """Per run: images seen in pre-training and fine-tuning, FLOPs; totals as CPU time at
    this machine's matmul rate (a lower bound) and GPU-hours on the reference GPU."""
    rate = matmul_rate()
    per_image: dict[str, float] = {}
    rows, total = [], 0.0
    for spec in runs:
        key = repr((spec.config.student, spec.config.mask))
        if key not in per_image:
            per_image[key] = step_flops_per_image(spec)
        size, size_note = dataset_size(spec)
        plan = schedule(spec.config, size)
        images = plan["total_steps"] * plan["effective_batch"] if spec.pretrains else 0
        f = spec.config.finetune
        ft_steps = f.steps if f.steps is not None else round((f.epochs or 0) * size / f.batch_size)
        if "finetune" in spec.config.run.evals:
            images += ft_steps * f.batch_size
        flops = images * per_image[key]
        total += flops
        rows.append({"id": spec.id, "images": images, "flops": flops, "data": size_note})
    return {"runs": rows, "total_flops": total, "cpu_rate": rate, "cpu_hours": total / rate / 3600,
            "gpu": GPU["name"], "gpu_hours": total / GPU["flops"] / 3600,
            "counted": "student forward+backward in pre-training and fine-tuning; teacher forward, "
                       "linear-probe features and the segmentation head are not counted"}
