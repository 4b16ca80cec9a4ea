"""What an evaluation evaluates: a mimbench checkpoint, a run directory, or a timm model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from mimbench import checkpoint, config as cfg
from mimbench.errors import ConfigError
from mimbench.student import build_encoder


def load_backbone(source: str, config: cfg.Config) -> tuple[nn.Module, str]:
    """The timm encoder named by `source`, and a description for the protocol card.

    source: a run directory or checkpoint file (the student's encoder, MIM head dropped);
    'timm:<name>' (that timm architecture with the config's student shape, random init,
    e.g. 'timm:random' for the student's own architecture: the random-init floor).
    """
    if source.startswith("timm:"):
        name = source[len("timm:"):]
        student = config.student if name == "random" else dataclasses.replace(config.student, model=name)
        torch.manual_seed(config.run.seed)
        return build_encoder(student), f"random init {student.model}"
    path = Path(source)
    ckpt_file = path / checkpoint.CHECKPOINT if path.is_dir() else path
    if not ckpt_file.exists():
        raise ConfigError(f"'{source}' is neither a run directory, a checkpoint nor timm:<name>.")
    state = checkpoint.load(ckpt_file)
    student_config = cfg.from_dict(state["config"]).student
    encoder = build_encoder(student_config)
    weights = {k[len("encoder."):]: v for k, v in state["student"].items() if k.startswith("encoder.")}
    encoder.load_state_dict(weights)
    return encoder, f"{ckpt_file} (step {state['step']})"


def pooled_features(encoder: nn.Module, images: torch.Tensor, block: int, pooling: str) -> torch.Tensor:
    """[B, 3, S, S] -> [B, D]: block `block`'s patch tokens averaged, or its cls token."""
    patches, prefix = encoder.forward_intermediates(
        images, indices=[block], intermediates_only=True, output_fmt="NLC",
        return_prefix_tokens=True)[0]  # [B, N, D], [B, P, D]
    return patches.mean(1) if pooling == "avg" else prefix[:, 0]
