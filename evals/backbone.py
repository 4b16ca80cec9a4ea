"""What an evaluation evaluates: a mimbench checkpoint, a run directory, or a timm model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from mimbench import checkpoint, config as cfg
from mimbench.errors import ConfigError
from mimbench.model_source import ModelSource
from mimbench.student import build_encoder, saved_encoder


def load_backbone(source: ModelSource, config: cfg.Config,
                  partial: bool = False) -> tuple[nn.Module, str, str | None]:
    """The timm encoder `source` names (a run's or checkpoint's student encoder, its MIM head
    dropped; an exported folder; a timm architecture at the config's student shape, random
    init), a description for the protocol card, and where an unfinished run stopped ('step 3
    of 6'; None for a finished run or another source). An unfinished run is refused unless
    `partial`."""
    if source.kind == "timm":
        name = source.name
        student = config.student if name == "random" else dataclasses.replace(config.student, model=name)
        torch.manual_seed(config.run.seed)
        return build_encoder(student), f"random init {student.model}", None
    if source.kind not in ("exported", "run", "checkpoint"):
        raise ConfigError(f"{source.text} is not a backbone to load (evals.tower builds a target's).")
    return saved_encoder(source, partial)


def saved_config(source: ModelSource) -> dict | None:
    """The whole config `source` was trained with (a run directory's config.yaml, or the one a
    checkpoint file carries); None for other sources."""
    path = Path(source.name)
    if source.kind == "run" and (path / "config.yaml").exists():
        return cfg.load_yaml(path / "config.yaml")
    if source.kind == "checkpoint":
        return checkpoint.load(path)["config"]
    return None


def saved_student(source: ModelSource) -> dict | None:
    """The student section `source` was trained with: from its saved config, or the
    architecture an exported folder's config.json records; None for other sources."""
    saved = saved_config(source)
    if saved is not None:
        return saved["student"]
    if source.kind == "exported":
        exported = json.loads((Path(source.name) / "config.json").read_text())
        args = exported["model_args"]
        size = args["img_size"]
        return {"model": exported["architecture"], "img_size": size if isinstance(size, int) else size[0],
                **{k: args[k] for k in ("patch_size", "embed_dim", "depth", "num_heads")}}
    return None


def per_block_rel_pos_bias(encoder: nn.Module) -> nn.Module:
    """`encoder` with BEiT's shared relative position bias copied into every block, as BEiT's
    fine-tuning and segmentation load a pre-trained checkpoint: each block then learns its own
    table (with its block's layer decay). Encoders without a shared table are returned as given."""
    shared = getattr(encoder, "rel_pos_bias", None)
    if shared is None:
        return encoder
    for block in encoder.blocks:
        attn = block.attn
        attn.window_size = shared.window_size
        attn.num_relative_distance = shared.relative_position_bias_table.shape[0]
        attn.relative_position_bias_table = nn.Parameter(shared.relative_position_bias_table.detach().clone())
        del attn.relative_position_index  # None in a block built without a table of its own
        attn.register_buffer("relative_position_index", shared.relative_position_index.clone(),
                             persistent=False)
    encoder.rel_pos_bias = None
    return encoder


def input_size(encoder: nn.Module, config: cfg.Config) -> int:
    """The side of the images `encoder` is evaluated on: a student's img_size, or the input size
    a target's own network (evals.tower) had in pre-training."""
    return getattr(encoder, "input_size", None) or config.student.img_size


def block_tokens(encoder: nn.Module, images: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, 3, S, S] -> block `block`'s patch tokens [B, N, D] and prefix tokens [B, P, D]. The
    last block's are read after the encoder's final norm, as MAE's linear probe (normed cls
    token) and DINO's k-NN (normed output) read them; earlier blocks' as they leave the block."""
    last = block in (-1, len(encoder.blocks) - 1)
    return encoder.forward_intermediates(images, indices=[block], norm=last, intermediates_only=True,
                                         output_fmt="NLC", return_prefix_tokens=True)[0]


def pooled_features(encoder: nn.Module, images: torch.Tensor, block: int, pooling: str) -> torch.Tensor:
    """[B, 3, S, S] -> [B, D]: block `block`'s patch tokens averaged, or its cls token."""
    patches, prefix = block_tokens(encoder, images, block)
    return patches.mean(1) if pooling == "avg" else prefix[:, 0]
