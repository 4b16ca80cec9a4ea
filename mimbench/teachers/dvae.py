"""A tiny discrete VAE (dall_e's own Encoder and Decoder) trained on world images only."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mimbench.fitting import Resumable, fit
from mimbench.lr_schedule import lr_at
from mimbench.targets.dvae import map_pixels, save_encoder
from mimbench.teachers.base import FIT_STATE, Teacher, WorldTeacherConfig, code_usage, world_images


WEIGHTS = "encoder.safetensors"


@dataclass(frozen=True)
class DVAETeacherConfig(WorldTeacherConfig):
    images: int = 20_000  # scenes from the world's `teacher` split (captions unused)
    crop: int = 32  # train on random crops: 4x cheaper, and the encoder is convolutional
    n_hid: int = 64  # dall_e's Encoder and Decoder
    n_blk_per_group: int = 1
    vocab_size: int = 512
    steps: int = 400
    batch_size: int = 64
    lr: float = 2e-3
    tau_start: float = 1.0  # gumbel-softmax temperature, annealed exponentially
    tau_end: float = 1 / 16
    kl_weight: float = 1e-4  # KL(q || uniform prior) per position, as DALL-E's stage one
    usage_weight: float = 0.01  # bonus for the entropy of the batch's code usage
    eval_images: int = 1_000


def random_crops(images: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """[B, 3, S, S] -> [B, 3, size, size], an independent random window per image."""
    if size >= images.shape[-1]:
        return images
    tops, lefts = rng.integers(0, images.shape[-1] - size + 1, (2, len(images)))
    return torch.stack([im[:, t:t + size, l:l + size] for im, t, l in zip(images, tops, lefts)])


def reconstruct(decoder, codes: torch.Tensor) -> torch.Tensor:
    """One-hot codes [B, K, h, w] -> images [B, 3, S, S] in [0, 1] (the decoder's first 3 of
    its 6 output channels, the logit-Laplace location, through a sigmoid)."""
    return torch.sigmoid(decoder(codes)[:, :3])


def build(config: DVAETeacherConfig, folder: Path, progress=None, parents=None) -> dict:
    import dall_e

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    images = world_images("teacher", config.images, config)
    encoder = dall_e.Encoder(n_hid=config.n_hid, n_blk_per_group=config.n_blk_per_group,
                             vocab_size=config.vocab_size).requires_grad_(True)
    decoder = dall_e.Decoder(n_hid=config.n_hid, n_blk_per_group=config.n_blk_per_group,
                             vocab_size=config.vocab_size).requires_grad_(True)
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)

    def loss_of(step: int) -> float:
        tau = config.tau_start * (config.tau_end / config.tau_start) ** (step / max(1, config.steps - 1))
        x = random_crops(images[rng.choice(len(images), config.batch_size, replace=False)],
                         config.crop, rng).float() / 255  # [B, 3, crop, crop]
        logits = encoder(map_pixels(x))  # [B, K, h, w]
        codes = F.gumbel_softmax(logits, tau=tau, hard=True, dim=1)  # straight-through one-hot
        recon_loss = F.mse_loss(reconstruct(decoder, codes), x)
        q = logits.softmax(1)
        kl = (q * (q.clamp_min(1e-10).log() + math.log(config.vocab_size))).sum(1).mean()
        usage = q.mean((0, 2, 3))  # [K]
        usage_entropy = -(usage * usage.clamp_min(1e-10).log()).sum()
        (recon_loss + config.kl_weight * kl - config.usage_weight * usage_entropy).backward()
        return recon_loss.item()  # the reconstruction error is the figure to watch

    fit(optimizer, loss_of, config.steps, partial(lr_at, total=config.steps, warmup=0, peak=config.lr,
                                                  decay="constant"),
        progress, "teacher dvae", Resumable(folder / FIT_STATE, {"encoder": encoder, "decoder": decoder}, rng))
    encoder.requires_grad_(False).eval()
    decoder.requires_grad_(False).eval()
    report = evaluate(encoder, decoder, config)
    save_encoder(encoder, folder / WEIGHTS)  # a state dict: loading it unpickles nothing
    save_file({k: v.contiguous() for k, v in decoder.state_dict().items()}, str(folder / "decoder.safetensors"))
    return report


@torch.no_grad()
def evaluate(encoder, decoder, config: DVAETeacherConfig) -> dict:
    """Reconstruction error against the mean-image baseline, and codebook usage."""
    x = world_images("val", config.eval_images, config).float() / 255
    ids = encoder(map_pixels(x)).argmax(1)  # [P, h, w]
    codes = F.one_hot(ids, config.vocab_size).permute(0, 3, 1, 2).float()
    mse = F.mse_loss(reconstruct(decoder, codes), x).item()
    mean_image_mse = F.mse_loss(x.mean(0, keepdim=True).expand_as(x), x).item()
    return {"recon_mse": mse, "mean_image_mse": mean_image_mse, **code_usage(ids, config.vocab_size),
            "vocab_size": config.vocab_size, "eval_images": len(x)}


def reference(folder: Path) -> dict:
    return {"weights": str(folder / WEIGHTS)}


TEACHERS = [
    Teacher("dvae", build, WEIGHTS, reference, DVAETeacherConfig(), 7.3),
    Teacher("dvae-smoke", build, WEIGHTS, reference,
            DVAETeacherConfig(image_size=32, images=128, crop=16, steps=3, batch_size=8,
                              eval_images=32), 0.1),
]
