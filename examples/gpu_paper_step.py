"""The paper preset's pre-training step on one GPU, and the CPU data path that must feed it.

Measures, in one process and within a wall-time budget (every section has its own cap, and
the results are written after each section, so a timeout still leaves numbers behind):

1. the `paper` preset's step (BEiT ViT-B/16 student, shared relative position bias, layer
   scale 0.1, bf16 autocast, AdamW) with the `pixels` target and a random-init CLIP ViT-B/16
   feature target: mimbench's step (engine.train_step + clipping + AdamW) against
   bench.BareReference, FLOPs per step (torch.utils.flop_counter, 2 FLOPs per multiply-add),
   and the fraction of the bf16 dense peak; eager, then with torch.compile of the student;
2. the pre-training data path on CPU (JPEG decode + MIMViews' random resized crop, flip,
   colour jitter and mask, collated as the engine's DataLoader does) at 1-16 workers, and
   GPU-side decode (torchvision.io.decode_jpeg on the device) + crop + resize;
3. $OUT/gpu_paper_step.json (all numbers) and $OUT/gpu_paper_step.md (tables for
   docs/performance.md).

Run: bash examples/gpu_paper_step.sh (it makes `mimbench` importable without installing it).
     python examples/gpu_paper_step.py --out DIR [--smoke] [--budget SECONDS]
--smoke: a 2-block 64-wide student, batch 4, 16 JPEGs; runs on a CPU in a few minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import signal
import statistics
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from mimbench import config as cfg
from mimbench.targets.source import build_target_for
from mimbench.bench import BareReference, Step, build_step, matmul_peak, timed
from mimbench.data import build_dataset
from mimbench.data.views import MIMDataset, MIMViews, StreamSampler, crop_box
from mimbench.masking import build_masking

SPEC_BF16_PEAK = 989e12  # FLOP/s: H100/H200 SXM dense bf16 (no sparsity), NVIDIA's datasheet
CLIP_STAND_IN = "vit_base_patch16_clip_224"  # timm's CLIP ViT-B/16 tower, if open_clip is missing


@dataclass(frozen=True)
class Mode:
    batch: int  # per-device batch of the step (BEiT: 2048 over 8 GPUs)
    fallback_batch: int  # if `batch` runs out of memory
    repeats: int  # timed rounds per step (each round: one mimbench step, one bare step)
    matmul_size: int  # side of the square bf16 matmul of the measured peak
    jpegs: int  # synthetic JPEGs for the data path
    workers: tuple[int, ...]  # DataLoader worker counts to time
    loader_batch: int  # images per DataLoader batch
    loader_seconds: float  # timed seconds per worker count (after the first wave of batches)
    decode_batch: int  # images per batched decode_jpeg call
    budget: float  # seconds for the whole script, from its start
    caps: dict  # section -> its own cap, seconds
    student: tuple[str, ...] = ()  # overrides of the paper preset's student
    teacher_amp: str | None = None  # None: the preset's run.teacher_amp


CAPS = {"peak": 25, "jpegs": 40, "step_pixels_eager": 70, "data_cpu": 80, "decode": 25,
        "step_clip_eager": 60, "step_pixels_compiled": 150, "step_clip_compiled": 120}
MODES = {
    "full": Mode(batch=256, fallback_batch=128, repeats=10, matmul_size=8192, jpegs=512,
                 workers=(1, 4, 8, 16), loader_batch=64, loader_seconds=4.0, decode_batch=256,
                 budget=320, caps=CAPS),
    "smoke": Mode(batch=4, fallback_batch=2, repeats=2, matmul_size=512, jpegs=16, workers=(1, 2),
                  loader_batch=4, loader_seconds=1.0, decode_batch=8, budget=900,
                  caps={**CAPS, "step_pixels_compiled": 240, "step_clip_compiled": 0},
                  student=("student.embed_dim=64", "student.depth=2", "student.num_heads=2"),
                  teacher_amp="none"),  # bf16 is emulated on a CPU: a ViT-B teacher would crawl
}


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------- sections, caps, results

class SectionTimeout(Exception):
    pass


class Cap:
    expired = False  # the running section's cap has passed (a library may have wrapped the exception)


@contextlib.contextmanager
def time_cap(seconds: float):
    """Raise SectionTimeout in the main thread after `seconds`, and again every 5 s until the
    section ends, in case a library catches or wraps it (Inductor wraps it in InductorError).
    SIGALRM lands between Python bytecodes: a long CUDA call finishes its C call first."""
    def alarm(signum, frame):
        Cap.expired = True
        signal.setitimer(signal.ITIMER_REAL, 5)
        raise SectionTimeout(f"stopped at its cap of {seconds:.0f} s")

    Cap.expired = False
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Report:
    """All results; written to out/ as JSON and markdown after every section."""

    out: Path
    deadline: float  # time.monotonic() at which the budget ends
    data: dict = field(default_factory=dict)
    current: str | None = None

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for name, text in (("gpu_paper_step.json", json.dumps(self.data, indent=1, default=str)),
                           ("gpu_paper_step.md", markdown(self.data))):
            tmp = self.out / (name + ".tmp")
            tmp.write_text(text)
            tmp.replace(self.out / name)

    def run(self, name: str, fn, min_seconds: float = 5.0) -> None:
        """fn(record) fills `record` (a dict kept even if fn fails half-way) within the
        section's cap and what is left of the budget."""
        left = self.deadline - time.monotonic()
        cap = min(self.data["mode"]["caps"][name], left - 2)
        status = self.data.setdefault("sections", {})
        record = self.data.setdefault(name, {})
        if cap < min_seconds:
            status[name] = {"status": "skipped", "reason": f"{max(left, 0):.0f} s of the budget left, "
                                                           f"cap {self.data['mode']['caps'][name]} s"}
            log(f"== {name}: skipped ({status[name]['reason']})")
            self.save()
            return
        log(f"== {name} (cap {cap:.0f} s)")
        start, self.current = time.monotonic(), name
        try:
            with time_cap(cap):
                fn(record)
            status[name] = {"status": "ok"}
        except SectionTimeout as e:
            status[name] = {"status": "timeout", "error": str(e)}
        except Exception as e:  # noqa: BLE001  (any failure is a result to report)
            status[name] = {"status": "timeout" if Cap.expired else "error",
                            "error": f"{type(e).__name__}: {e}"[:3000],
                            "traceback": traceback.format_exc()[-3000:]}
        status[name]["seconds"] = round(time.monotonic() - start, 1)
        self.current = None
        log(f"   {name}: {status[name]['status']} in {status[name]['seconds']} s"
            + (f" ({status[name]['error'][:300]})" if "error" in status[name] else ""))
        free_memory()
        self.save()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- environment, peak

def environment() -> dict:
    cuda = torch.cuda.is_available()
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(0) if cuda else f"CPU ({cpu_model()})",
            "cpu_model": cpu_model(),
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
            "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "python": platform.python_version(),
            "cpu_cores": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "host": platform.node()}


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def bf16_matmul_rate(size: int, repeats: int = 10) -> float:
    """FLOP/s of the best bf16 [size, size] @ [size, size] matmul (2 * size^3 FLOPs)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    return 2 * size**3 / min(timed(lambda: a @ b, repeats, warmup=3))


def section_peak(mode: Mode, record: dict) -> None:
    record["bf16_matmul_size"] = mode.matmul_size
    record["bf16_measured_flops"] = bf16_matmul_rate(mode.matmul_size)
    record["bf16_spec_flops"] = SPEC_BF16_PEAK
    record["fp32_matmul_flops"] = matmul_peak()  # bench's: float32 8192^3 on a GPU (TF32 per torch's default)


# ---------------------------------------------------------------- synthetic JPEGs

def synthetic_jpeg(path: Path, index: int) -> int:
    """A 500x375 (or 375x500) JPEG of smooth colour fields plus fine noise, quality 90:
    ImageNet-like size and entropy. Returns its size in bytes."""
    rng = np.random.default_rng(index)
    size = (500, 375) if index % 2 == 0 else (375, 500)  # (width, height)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    pixels = np.asarray(coarse, dtype=np.int16) + rng.normal(0, 10, (size[1], size[0], 3)).astype(np.int16)
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return path.stat().st_size


def section_jpegs(mode: Mode, root: Path, record: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / f"img_{i:05d}.jpg" for i in range(mode.jpegs)]
    start = time.perf_counter()
    with ThreadPoolExecutor(min(16, len(os.sched_getaffinity(0)))) as pool:
        sizes = list(pool.map(synthetic_jpeg, paths, range(len(paths))))
    record.update(root=str(root), count=len(paths), mean_kib=round(statistics.mean(sizes) / 1024, 1),
                  seconds=round(time.perf_counter() - start, 1))


# ---------------------------------------------------------------- the step

def paper_config(mode: Mode, target: str, root: Path, extra: tuple[str, ...] = ()):
    overrides = [f"data.root={root}", *mode.student, *extra]
    if mode.teacher_amp:
        overrides.append(f"run.teacher_amp={mode.teacher_amp}")
    return cfg.resolve("paper", target=target, overrides=tuple(overrides))


@dataclass
class StepParts:
    """bench.build_step's step, with the bare reference of the same shapes."""

    step: Step
    bare: BareReference

    @property
    def size(self) -> int:
        return len(self.step.batch["mask"])

    @property
    def student(self) -> torch.nn.Module:
        return self.step.student

    def mimbench_step(self, model: torch.nn.Module) -> None:
        """One optimizer step as engine.train_loop takes it; `model` is the student or its
        torch.compile wrapper."""
        self.step(model)

    def bare_step(self) -> None:
        self.bare(self.step.batch)


def build_parts(config, batch_size: int) -> StepParts:
    """bench.build_step on one batch of views from the JPEG folder, and the bare reference."""
    step = build_step(config, batch_size)
    return StepParts(step, BareReference(config, step.provider, step.spec, step.loss, step.device))


def count_flops(fn) -> float:
    """FLOPs of one call (2 per multiply-add), counted by torch's FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        fn()
    sync()
    return float(counter.get_total_flops())


def rates(batch: int, seconds: float, flops: float, peak: dict) -> dict:
    achieved = flops / seconds  # FLOP/s
    return {"step_ms": round(seconds * 1e3, 2), "images_per_s": round(batch / seconds, 1),
            "achieved_tflops": round(achieved / 1e12, 2),
            "of_measured_bf16_peak": round(achieved / peak["bf16_measured_flops"], 4),
            "of_spec_bf16_peak": round(achieved / SPEC_BF16_PEAK, 4)}


def interleaved(ours, bare, repeats: int) -> tuple[float, float]:
    """Median seconds of each step, timed alternately as bench.bench does."""
    a, b = [], []
    for i in range(repeats):
        a += timed(ours, 1, warmup=int(i == 0))
        b += timed(bare, 1, warmup=int(i == 0))
    return statistics.median(a), statistics.median(b)


def describe(config) -> dict:
    s, o = config.student, config.optim
    return {"student": s.model, "style": s.style, "embed_dim": s.embed_dim, "depth": s.depth,
            "layer_scale": s.layer_scale, "extra": s.extra, "amp": o.amp,
            "teacher_amp": config.run.teacher_amp, "masked_patches": config.mask.count(s.grid),
            "target": config.target.name, "target_options": config.target.options,
            "loss": config.target.loss, "clip_grad": o.clip_grad}


def eager_step(mode: Mode, make_config, key: str, parts_store: dict, peak: dict, record: dict) -> None:
    """Build at mode.batch (falling back to mode.fallback_batch on out-of-memory), count the
    FLOPs of each step, time both steps eagerly; keeps the parts for the compiled section."""
    config = make_config()
    record["config"] = describe(config)
    for size in (mode.batch, mode.fallback_batch):
        try:
            parts = build_parts(config, size)
            record["batch"] = size
            # the counted calls double as warm-up (cuBLAS, cuDNN, allocator)
            record["flops_mimbench"] = count_flops(lambda: parts.mimbench_step(parts.student))
            record["flops_bare"] = count_flops(parts.bare_step)
            ours, bare = interleaved(lambda: parts.mimbench_step(parts.student), parts.bare_step, mode.repeats)
            break
        except torch.OutOfMemoryError:
            record.setdefault("out_of_memory_at", []).append(size)
            log(f"   out of memory at batch {size}")
        parts = None
        free_memory()  # outside the except block: its traceback no longer holds the tensors
    else:
        raise RuntimeError(f"out of memory at batches {mode.batch} and {mode.fallback_batch}")
    if torch.cuda.is_available():
        record["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    record["eager"] = {"mimbench": rates(size, ours, record["flops_mimbench"], peak),
                       "bare": rates(size, bare, record["flops_bare"], peak), "ratio": round(ours / bare, 3)}
    parts_store[key] = parts
    log(f"   {key} eager: {json.dumps(record['eager'])}")


def first_calls(fn, record: dict, prefix: str, eager_ms: float) -> None:
    """Time the first two calls of a freshly compiled step: compilation (and any recompile)."""
    for n in (1, 2):
        start = time.perf_counter()
        fn()
        sync()
        record[f"{prefix}_call{n}_s"] = round(time.perf_counter() - start, 2)
    record[f"{prefix}_compile_s"] = round(record[f"{prefix}_call1_s"] + record[f"{prefix}_call2_s"]
                                          - 2 * eager_ms / 1e3, 2)


def compiled_step(mode: Mode, key: str, parts_store: dict, eager: dict, peak: dict, record: dict) -> None:
    """torch.compile the student (mimbench step), then the bare ViT's forward_features; each
    on its own (a failure of one is recorded and the other still runs); compile time is
    reported apart from the rate."""
    parts = parts_store.get(key)
    if parts is None:
        raise RuntimeError(f"the eager section of {key} left no step to compile")
    record["batch"] = parts.size
    student = torch.compile(parts.student)
    compile_and_time(mode, lambda: parts.mimbench_step(student), "mimbench", key, eager, peak, record)
    vit = parts.bare.vit
    vit.forward_features = torch.compile(vit.forward_features)  # what BareReference calls
    compile_and_time(mode, parts.bare_step, "bare", key, eager, peak, record)
    if "mimbench" in record and "bare" in record:
        record["ratio"] = round(record["mimbench"]["step_ms"] / record["bare"]["step_ms"], 3)
    if "mimbench" not in record and "bare" not in record:
        raise RuntimeError("torch.compile failed for both steps: " + record.get("mimbench_error", "")[:1000])


def compile_and_time(mode: Mode, step, name: str, key: str, eager: dict, peak: dict, record: dict) -> None:
    try:
        first_calls(step, record, name, eager["eager"][name]["step_ms"])
        seconds = statistics.median(timed(step, mode.repeats, warmup=0))
    except Exception as e:  # noqa: BLE001  (the error text is the result)
        if isinstance(e, SectionTimeout) or Cap.expired:  # out of time: the section ends here
            raise SectionTimeout(f"{name} step: {type(e).__name__}: {e}"[:500]) from e
        record[f"{name}_error"] = f"{type(e).__name__}: {e}"[:3000]
        record[f"{name}_traceback"] = traceback.format_exc()[-3000:]
        log(f"   {key} compiled {name} failed: {record[f'{name}_error'][:300]}")
        return
    record[name] = rates(record["batch"], seconds, eager[f"flops_{name}"], peak)
    log(f"   {key} compiled {name}: {json.dumps(record[name])}")


def clip_config(mode: Mode, root: Path, record: dict):
    """The clip target with random weights (open_clip, no download); if open_clip cannot be
    imported, timm's CLIP ViT-B/16 tower with random weights through the timm target (the
    same architecture and FLOPs: pre-norm ViT-B/16, 768 wide, patch tokens of the last block)."""
    try:
        import open_clip  # noqa: F401

        record["target_used"] = "clip (open_clip ViT-B-16, random weights)"
        return paper_config(mode, "clip", root, ("target.weights=null",))
    except ImportError as e:
        record["open_clip_import_error"] = f"{type(e).__name__}: {e}"
        record["target_used"] = f"timm {CLIP_STAND_IN} (random weights), standing in for clip"
        return paper_config(mode, "timm", root, (f"target.model={CLIP_STAND_IN}", "target.weights=null"))


# ---------------------------------------------------------------- the data path

def loader_rate(config, spec, root: Path, workers: int, batch: int, seconds: float, jitter: float) -> dict:
    """Images/s of the engine's DataLoader (FolderDataset -> MIMDataset -> MIMViews.collate)
    with `workers` workers, after the first wave of `workers` batches (worker start-up)."""
    images = build_dataset("folder", root=str(root))
    d = config.data
    views = MIMViews(config.student.img_size, spec.input_size, spec.interpolation,
                     build_masking(config.mask, config.student), d.crop_scale, d.hflip, jitter)
    loader = torch.utils.data.DataLoader(
        MIMDataset(images, views, config.run.seed), batch_size=batch,
        sampler=StreamSampler(len(images), config.run.seed), collate_fn=views.collate,
        num_workers=workers, pin_memory=torch.cuda.is_available())
    stream = iter(loader)
    for _ in range(workers):  # the first wave: every worker starts and makes one batch
        next(stream)
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < seconds or done < 2 * workers:
        for _ in range(workers):  # whole waves, so that every worker contributes alike
            next(stream)
        done += workers
    elapsed = time.perf_counter() - start
    del stream
    rate = done * batch / elapsed
    return {"workers": workers, "jitter": jitter, "batches": done, "images_per_s": round(rate, 1),
            "images_per_s_per_worker": round(rate / workers, 1)}


def per_image_ms(config, spec, root: Path, count: int) -> dict:
    """One thread, in this process: ms per image of decode, views (crop, flip, jitter, mask)
    and the collate's resize, for the paper preset's views."""
    images = build_dataset("folder", root=str(root))
    d = config.data
    views = MIMViews(config.student.img_size, spec.input_size, spec.interpolation,
                     build_masking(config.mask, config.student), d.crop_scale, d.hflip, d.color_jitter)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n = min(count, len(images))
        t0 = time.perf_counter()
        decoded = [images[i][0] for i in range(n)]
        t1 = time.perf_counter()
        g = torch.Generator().manual_seed(0)
        items = [{**views(im, g), "index": i} for i, im in enumerate(decoded)]
        t2 = time.perf_counter()
        views.collate(items)
        t3 = time.perf_counter()
    finally:
        torch.set_num_threads(threads)
    return {"images": n, "decode_ms": round((t1 - t0) / n * 1e3, 2),
            "views_ms": round((t2 - t1) / n * 1e3, 2), "collate_ms": round((t3 - t2) / n * 1e3, 2)}


def section_data_cpu(mode: Mode, root: Path, record: dict) -> None:
    config = paper_config(mode, "pixels", root)
    spec = build_target_for(config).spec  # pixels: 224 px bicubic teacher view, no weights
    record["views"] = {"crop_scale": config.data.crop_scale, "hflip": config.data.hflip,
                       "color_jitter": config.data.color_jitter, "size": config.student.img_size,
                       "loader_batch": mode.loader_batch}
    record["per_image_one_thread"] = per_image_ms(config, spec, root, 4 * mode.loader_batch)
    log(f"   per image: {record['per_image_one_thread']}")
    runs = record.setdefault("loader", [])
    # the preset's views (jitter 0.4) at every worker count, then crop + flip only at the ends
    plan = [(w, config.data.color_jitter) for w in mode.workers]
    plan += [(w, 0.0) for w in (mode.workers[0], mode.workers[-1])]
    for workers, jitter in plan:
        runs.append(loader_rate(config, spec, root, workers, mode.loader_batch, mode.loader_seconds, jitter))
        log(f"   loader: {runs[-1]}")


def section_decode(mode: Mode, root: Path, record: dict) -> None:
    """torchvision.io.decode_jpeg on a list of JPEG byte tensors (on the GPU where there is
    one), then each image cropped as MIMViews crops (crop_box, scale 0.08-1), flipped with
    p 0.5 and resized to 224 bicubic with antialiasing: float [B, 3, 224, 224]."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    files = sorted(root.glob("*.jpg"))
    data = [torchvision.io.read_file(str(files[i % len(files)])) for i in range(mode.decode_batch)]
    g = torch.Generator().manual_seed(0)

    def decode():
        return torchvision.io.decode_jpeg(data, device=device)  # list of uint8 [3, H, W]

    def decode_crop():
        out = torch.empty(len(data), 3, 224, 224, device=device)
        for i, image in enumerate(decode()):
            top, left, h, w = crop_box(image.shape[2], image.shape[1], (0.08, 1.0), g)
            crop = image[None, :, top:top + h, left:left + w].float()  # [1, 3, h, w]
            if torch.rand((), generator=g).item() < 0.5:
                crop = crop.flip(-1)
            out[i] = F.interpolate(crop, size=(224, 224), mode="bicubic", antialias=True)[0]
        return out

    record.update(device=device, batch=len(data))
    for name, fn in (("decode", decode), ("decode_crop_resize", decode_crop)):
        seconds = statistics.median(timed(fn, 5, warmup=2))
        record[name] = {"batch_ms": round(seconds * 1e3, 2), "images_per_s": round(len(data) / seconds, 1)}
        log(f"   {name}: {record[name]}")


def cores_needed(data: dict) -> dict:
    """CPU cores (DataLoader workers) one GPU needs to keep up with each measured step rate."""
    runs = data.get("data_cpu", {}).get("loader", [])
    preset = [r for r in runs if r["jitter"] > 0]
    if not preset:
        return {}
    per_core = {f"at_{r['workers']}_workers": r["images_per_s_per_worker"] for r in preset}
    worst = min(per_core.values())
    steps = {}
    for key in ("step_pixels", "step_clip"):
        eager = data.get(f"{key}_eager", {}).get("eager", {}).get("mimbench", {})
        compiled = data.get(f"{key}_compiled", {}).get("mimbench", {})
        for how, r in (("eager", eager), ("compiled", compiled)):
            if r:
                steps[f"{key[5:]}_{how}"] = {"step_images_per_s": r["images_per_s"],
                                             "cores": round(r["images_per_s"] / worst, 1)}
    return {"per_core_images_per_s": per_core, "per_core_used": worst, "steps": steps}


# ---------------------------------------------------------------- markdown

def markdown(data: dict) -> str:
    env = data.get("environment", {})
    peak = data.get("peak", {})
    lines = [f"### Paper preset step on {env.get('device', '?')} ({data.get('mode', {}).get('name', '?')} mode)",
             "",
             f"{env.get('date', '?')}; torch {env.get('torch')}, torchvision {env.get('torchvision')}, "
             f"timm {env.get('timm')}, CUDA {env.get('cuda')}, {env.get('cpu_cores')} CPU cores. "
             f"bf16 {peak.get('bf16_matmul_size', '?')}^3 matmul: "
             f"{peak.get('bf16_measured_flops', 0) / 1e12:.0f} TFLOP/s measured; "
             f"{SPEC_BF16_PEAK / 1e12:.0f} TFLOP/s spec (dense).",
             "",
             "| target | compile | batch | step | ms | images/s | TFLOP/step | TFLOP/s | of measured bf16 | of 989 spec |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key in ("pixels", "clip"):
        eager, compiled = data.get(f"step_{key}_eager", {}), data.get(f"step_{key}_compiled", {})
        for how, rec in (("no", eager.get("eager", {})), ("yes", compiled)):
            for step in ("mimbench", "bare"):
                r = rec.get(step)
                if r:
                    flops = eager.get(f"flops_{step}", 0) / 1e12
                    lines.append(f"| {key} | {how} | {eager.get('batch')} | {step} | {r['step_ms']:.1f} | "
                                 f"{r['images_per_s']:.0f} | {flops:.2f} | {r['achieved_tflops']:.0f} | "
                                 f"{r['of_measured_bf16_peak']:.0%} | {r['of_spec_bf16_peak']:.0%} |")
    lines += compile_notes(data) + data_lines(data) + status_lines(data)
    return "\n".join(lines) + "\n"


def compile_notes(data: dict) -> list[str]:
    notes = []
    for key in ("pixels", "clip"):
        rec = data.get(f"step_{key}_compiled", {})
        parts = [f"{step} {rec[f'{step}_compile_s']:.0f} s" for step in ("mimbench", "bare")
                 if f"{step}_compile_s" in rec]
        if parts:
            notes.append(f"- compile time ({key}, excluded from the rates): {', '.join(parts)}")
        for step in ("mimbench", "bare"):
            if f"{step}_error" in rec:
                notes.append(f"- torch.compile of the {step} step ({key}) failed: {rec[f'{step}_error'][:200]}")
    if "step_clip_eager" in data:
        notes.append(f"- clip target: {data['step_clip_eager'].get('target_used', '?')}")
    return [""] + notes if notes else []


def data_lines(data: dict) -> list[str]:
    cpu, gpu = data.get("data_cpu", {}), data.get("decode", {})
    lines = ["", "| data path | workers | images/s | images/s per worker |", "|---|---|---|---|"]
    for r in cpu.get("loader", []):
        what = "decode + crop + flip + jitter 0.4 + mask" if r["jitter"] else "decode + crop + flip + mask"
        lines.append(f"| CPU: {what} | {r['workers']} | {r['images_per_s']:.0f} | "
                     f"{r['images_per_s_per_worker']:.0f} |")
    for name in ("decode", "decode_crop_resize"):
        if name in gpu:
            lines.append(f"| {gpu['device']}: decode_jpeg{' + crop + resize' if 'crop' in name else ''} "
                         f"(batch {gpu['batch']}) | - | {gpu[name]['images_per_s']:.0f} | - |")
    one = cpu.get("per_image_one_thread")
    if one:
        lines.append(f"\nOne thread, ms per image: decode {one['decode_ms']}, views {one['views_ms']}, "
                     f"collate (resize) {one['collate_ms']}.")
    need = data.get("cores_needed", {})
    for name, r in need.get("steps", {}).items():
        lines.append(f"- {name}: {r['step_images_per_s']:.0f} images/s needs ~{r['cores']:.0f} CPU cores "
                     f"at {need['per_core_used']:.0f} images/s per core")
    return lines if len(lines) > 3 else []


def status_lines(data: dict) -> list[str]:
    bad = {k: v for k, v in data.get("sections", {}).items() if v["status"] != "ok"}
    return ["", "Sections not ok: " + "; ".join(f"{k} {v['status']}: {v.get('error', v.get('reason', ''))[:200]}"
                                                for k, v in bad.items())] if bad else []


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_paper_step_out"))
    parser.add_argument("--smoke", action="store_true", help="tiny student, CPU-sized, every code path")
    parser.add_argument("--budget", type=float, help="seconds for the whole script (default: the mode's)")
    parser.add_argument("--jpeg-dir", default=None, help="where the synthetic JPEGs go (default /tmp/...)")
    args = parser.parse_args()
    mode_name = "smoke" if args.smoke else "full"
    mode = MODES[mode_name]
    budget = args.budget or mode.budget
    report = Report(Path(args.out), time.monotonic() + budget)
    report.data.update(mode={"name": mode_name, "budget_s": budget, "caps": mode.caps, "batch": mode.batch,
                             "repeats": mode.repeats, "student_overrides": list(mode.student)},
                       environment=environment())
    on_term = lambda signum, frame: (report.data.setdefault("killed", {"signal": signum, "in": report.current}),  # noqa: E731
                                     report.save(), sys.exit(128 + signum))
    signal.signal(signal.SIGTERM, on_term)
    log(json.dumps(report.data["environment"]))
    root = Path(args.jpeg_dir or f"/tmp/mimbench_jpegs_{mode.jpegs}")
    parts: dict = {}  # "pixels"/"clip" -> StepParts, from the eager sections to the compiled ones
    d = report.data

    report.run("jpegs", lambda r: section_jpegs(mode, root, r))
    report.run("peak", lambda r: section_peak(mode, r))
    peak = d["peak"]
    if "bf16_measured_flops" not in peak:
        peak["bf16_measured_flops"] = SPEC_BF16_PEAK  # so that the fractions still come out
    report.run("step_pixels_eager", lambda r: eager_step(mode, lambda: paper_config(mode, "pixels", root),
                                                          "pixels", parts, peak, r))
    report.run("data_cpu", lambda r: section_data_cpu(mode, root, r))
    d["cores_needed"] = cores_needed(d)
    report.run("decode", lambda r: section_decode(mode, root, r))
    report.run("step_clip_eager", lambda r: eager_step(mode, lambda: clip_config(mode, root, r),
                                                        "clip", parts, peak, r))
    report.run("step_pixels_compiled", lambda r: compiled_step(mode, "pixels", parts, d["step_pixels_eager"], peak, r),
               min_seconds=30)
    report.run("step_clip_compiled", lambda r: compiled_step(mode, "clip", parts, d["step_clip_eager"], peak, r),
               min_seconds=30)
    d["cores_needed"] = cores_needed(d)
    d["total_s"] = round(budget - (report.deadline - time.monotonic()), 1)
    report.save()
    print(markdown(d), flush=True)


if __name__ == "__main__":
    main()
