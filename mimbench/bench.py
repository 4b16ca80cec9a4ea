"""Where a pre-training step's time goes, measured side by side in one process.

For a config: the mimbench step (engine.train_step + clipping + AdamW) and the bare
reference of the same shapes written directly with torch (teacher forward under inference
mode, a plain timm ViT forward + backward on the student view, a linear head, AdamW), the
masks and data views for one batch, this machine's matmul peak, and the FLOPs of a step.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import timm
from timm.models.vision_transformer import Block
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mimbench import distributed, engine
from mimbench.config import Config
from mimbench.data import build_dataset
from mimbench.data.views import MIMDataset, MIMViews, StreamSampler, student_input, teacher_input
from mimbench.losses import check_loss
from mimbench.masking import build_masking
from mimbench.optim import adamw, pretraining_optimizer
from mimbench.student import build_student
from mimbench.targets.source import Targets, build_target_for


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each call after `warmup` untimed ones; waits for queued GPU work."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def matmul_peak(repeats: int = 10) -> float:
    """FLOP/s of the best float32 square matmul on the GPU if there is one, else the CPU:
    this machine's practical peak."""
    device, size = ("cuda", 8192) if torch.cuda.is_available() else ("cpu", 1024)
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    return 2 * size**3 / min(timed(lambda: a @ b, repeats, warmup=2))


def one_batch(config: Config, spec, batch_size: int):
    """A batch of views as the engine builds them, and a callable that builds the next one of
    the same sample stream (other images each time, as in training: no warm caches)."""
    images = build_dataset(config.data.name, **config.data.options)
    views = MIMViews(config.student.img_size, spec.input_size, spec.interpolation,
                     build_masking(config.mask, config.student), config.data.crop_scale,
                     config.data.hflip, config.data.color_jitter)
    dataset = MIMDataset(images, views, config.run.seed)
    stream = iter(StreamSampler(len(images), config.run.seed))

    def make():
        return views.collate([dataset[next(stream)] for _ in range(batch_size)])

    return make(), make


class BareReference:
    """What a step must compute, written directly: teacher forward, ViT forward + backward,
    a linear head, a masked loss, AdamW. For the mae style the ViT runs on the visible patches
    and a decoder of timm blocks runs on visible + mask tokens before the head."""

    def __init__(self, config: Config, provider, spec, loss: str, device: torch.device):
        s = config.student
        self.vit = timm.create_model(s.model, pretrained=False, num_classes=0, img_size=s.img_size,
                                     patch_size=s.patch_size, embed_dim=s.embed_dim, depth=s.depth,
                                     num_heads=s.num_heads, **s.extra)
        self.vit.to(device)
        self.mae = s.style == "mae"
        width = s.decoder_dim if self.mae else s.embed_dim
        self.head = torch.nn.Linear(width, spec.dim).to(device)
        params = [*self.vit.parameters(), *self.head.parameters()]
        if self.mae:
            self.decoder = torch.nn.Sequential(
                torch.nn.Linear(s.embed_dim, width),
                *[Block(width, s.decoder_heads, qkv_bias=True) for _ in range(s.decoder_depth)],
                torch.nn.LayerNorm(width)).to(device)
            self.mask_token = torch.zeros(1, 1, width, device=device, requires_grad=True)
            params += [*self.decoder.parameters(), self.mask_token]
        self.optimizer = adamw(params, lr=config.optim.lr)  # the engine's AdamW
        self.provider, self.loss = provider, loss
        self.device = device
        self.amp, self.teacher_amp = config.optim.amp, config.run.teacher_amp  # as the step runs

    def __call__(self, batch: dict) -> None:
        with torch.inference_mode(), distributed.autocast(self.device, self.teacher_amp):
            target = self.provider(teacher_input(batch["teacher"]))
        target = target.clone()
        with distributed.autocast(self.device, self.amp):
            images = student_input(batch["student"])
            tokens = (self.mae_tokens(images, batch["mask"]) if self.mae else
                      self.vit.forward_features(images)[:, -batch["mask"].shape[1]:])  # [B, N, D]
            pred = self.head(tokens)[batch["mask"]].float()
        goal = target[batch["mask"]]
        loss = F.cross_entropy(pred, goal) if self.loss == "ce" else F.mse_loss(pred, goal.float())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


    def mae_tokens(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S], [B, N] -> the decoder's tokens [B, N, decoder width]."""
        vit, (b, n) = self.vit, mask.shape
        x = vit.patch_embed(images) + vit.pos_embed[:, 1:]  # [B, N, D]
        keep = (~mask).nonzero()[:, 1].view(b, -1)  # [B, V]
        x = x.gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(b, -1, -1)
        x = self.decoder[0](vit.norm(vit.blocks(torch.cat([cls, x], 1))))  # [B, 1 + V, d]
        full = self.mask_token.expand(b, n, -1).scatter(1, keep[..., None].expand(-1, -1, x.shape[-1]), x[:, 1:])
        return self.decoder[1:](torch.cat([x[:, :1], full], 1))[:, 1:]


@dataclass
class StepParts:
    """The timed pieces of one configuration's step, ready to call."""

    ours: Callable[[], None]  # engine.train_step + clipping + AdamW on a fixed batch
    bare: Callable[[], None]  # BareReference on the same batch
    masks: Callable[[], object]  # the masks of one batch
    data: Callable[[], object]  # views + masks of one batch, as the loader builds them
    batch: int
    flops: float  # of one mimbench step, counted by FlopCounterMode


@dataclass
class Step:
    """One configuration's pre-training step, built as the engine builds it, on a fixed batch."""

    config: Config
    provider: object
    spec: object
    loss: str
    batch: dict  # {"student": uint8 [B, S, S, 3], "teacher": ..., "mask": bool [B, N], "index"}
    make_batch: Callable[[], dict]  # the next batch of the sample stream, as the loader makes it
    student: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device

    def __call__(self, model: torch.nn.Module | None = None) -> None:
        """engine.train_step + clipping + AdamW; `model`: the student (default) or a
        torch.compile wrapper of it."""
        engine.train_step(self.student if model is None else model, Targets(self.provider, self.config.target.name),
                          [self.batch], self.loss, self.config, self.device)
        if self.config.optim.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.config.optim.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def build_step(config: Config, batch_size: int) -> Step:
    torch.manual_seed(0)
    _, device = distributed.init(config.run.device)
    provider = build_target_for(config, device=device)
    spec = provider.spec
    loss = config.target.loss or spec.loss
    check_loss(loss, spec.kind, config.target.name)
    batch, make_batch = one_batch(config, spec, batch_size)
    batch = {k: v.to(device) for k, v in batch.items()}
    student = build_student(config.student, spec).to(device)
    return Step(config, provider, spec, loss, batch, make_batch, student,
                pretraining_optimizer(student, config), device)


def prepare(config: Config, batch_size: int | None = None) -> StepParts:
    b = batch_size or config.optim.batch_size
    step = build_step(config, b)
    ours, batch = step, step.batch
    bare = BareReference(config, step.provider, step.spec, step.loss, step.device)
    masker = build_masking(config.mask, config.student)
    g = torch.Generator().manual_seed(0)
    with FlopCounterMode(display=False) as counter:
        ours()
    return StepParts(ours, lambda: bare(batch), lambda: [masker(g) for _ in range(b)],
                     step.make_batch, b, float(counter.get_total_flops()))


def figures(parts: StepParts, step_s: float, bare_s: float, masks_s: float, data_s: float,
            peak_flops: float) -> dict:
    return {"batch": parts.batch, "step_s": step_s, "bare_s": bare_s, "ratio": step_s / bare_s,
            "images_per_s": parts.batch / step_s, "flops": parts.flops,
            "achieved_flops": parts.flops / step_s, "peak_flops": peak_flops,
            "fraction_of_peak": parts.flops / step_s / peak_flops,
            "masks_s": masks_s, "masks_fraction": masks_s / step_s,
            "data_s": data_s, "data_fraction": data_s / step_s}


def bench(config: Config, repeats: int = 5, batch_size: int | None = None) -> dict:
    """Median seconds of each part of a step: the two steps interleaved so that drifts of the
    machine hit both alike, data and masks each timed right after a step (as the training
    loop builds the next batch), and the figures derived from them."""
    parts = prepare(config, batch_size)
    ours, data, reference, masks = [], [], [], []
    for i in range(repeats):
        ours += timed(parts.ours, 1, warmup=int(i == 0))
        data += timed(parts.data, 1, warmup=0)
        reference += timed(parts.bare, 1, warmup=int(i == 0))
        masks += timed(parts.masks, 1, warmup=0)
    result = figures(parts, statistics.median(ours), statistics.median(reference),
                     statistics.median(masks), statistics.median(data), matmul_peak())
    return {"target": config.target.name, "repeats": repeats, **result}
