"""The student: a timm ViT (or BEiT) encoder and a head shaped by the target's spec, in one of
two styles. beit: every patch enters the encoder, masked ones replaced by a mask token (BEiT,
MVP). mae: the encoder sees the visible patches only and a light decoder, given mask tokens at
the masked positions, predicts them (MAE). Both return predictions for every position; the
loss reads the masked ones."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import timm
import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.beit import Beit
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from mimbench import checkpoint
from mimbench.config import StudentConfig, from_dict
from mimbench.errors import ConfigError, MimbenchError
from mimbench.targets.base import TargetSpec


def build_encoder(config: StudentConfig, **overrides) -> nn.Module:
    """A timm ViT/BEiT without classifier, shaped by the config; names stay timm's.

    Built with global_pool='token', so that `norm` is the final LayerNorm after the blocks for
    both families (timm's BEiT defaults to 'avg', which moves it to an `fc_norm` after pooling):
    BEiT's and MAE's pre-training normalise the tokens before the head. Fine-tuning drops that
    norm and normalises the pooled tokens instead (evals.finetune.Classifier), as both do."""
    kwargs = dict(img_size=config.img_size, patch_size=config.patch_size,
                  embed_dim=config.embed_dim, depth=config.depth, num_heads=config.num_heads,
                  drop_path_rate=config.drop_path, num_classes=0, global_pool="token")
    if config.layer_scale is not None:
        kwargs["init_values"] = config.layer_scale
    kwargs.update(config.extra)
    kwargs.update(overrides)
    try:
        encoder = timm.create_model(config.model, pretrained=False, **kwargs)
    except RuntimeError as e:
        raise ConfigError(f"timm cannot build student '{config.model}' ({e}); "
                          f"pick a vit_* or beit_* model.") from None
    if not hasattr(encoder, "patch_embed") or not hasattr(encoder, "blocks"):
        raise ConfigError(f"student '{config.model}' is not a ViT; pick a vit_* or beit_* model.")
    if config.pos_embed == "sincos":
        set_sincos_pos_embed(encoder, config)
    return encoder


def add_positions(enc: VisionTransformer, x: Tensor) -> Tensor:
    """Patch tokens [B, N, width] -> [B, prefix + N, width]: the class (and register) tokens
    put in front and the absolute position embedding added (after them with no_embed_class,
    over them otherwise), then position dropout: what timm's VisionTransformer does at its
    built image size, written here because timm's own (_pos_embed) is private."""
    prefix = [t.expand(len(x), -1, -1) for t in (enc.cls_token, enc.reg_token) if t is not None]
    if enc.pos_embed is None:
        return torch.cat(prefix + [x], dim=1)
    if enc.no_embed_class:
        x = torch.cat(prefix + [x + enc.pos_embed], dim=1)
    else:
        x = torch.cat(prefix + [x], dim=1) + enc.pos_embed
    return enc.pos_drop(x)


def vit_blocks(enc: VisionTransformer, x: Tensor) -> Tensor:
    """Patch tokens [B, N, width] through a timm ViT: positions, its blocks -> [B, prefix + N, width]."""
    return enc.blocks(enc.norm_pre(enc.patch_drop(add_positions(enc, x))))


def beit_blocks(enc: Beit, x: Tensor) -> Tensor:
    """Patch tokens [B, N, width] through timm's BEiT as its forward_features runs them:
    class token, absolute positions if any, the blocks with the shared relative position bias."""
    x = torch.cat([enc.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    if enc.pos_embed is not None:
        x = x + enc.pos_embed
    x = enc.pos_drop(x)
    shared_bias = enc.rel_pos_bias() if enc.rel_pos_bias is not None else None
    for block in enc.blocks:
        x = block(x, shared_rel_pos_bias=shared_bias)
    return x


def set_sincos_pos_embed(encoder: nn.Module, config: StudentConfig) -> None:
    """MAE's position embedding: 2-D sin-cos over the patch grid, zeros for prefix tokens."""
    table = getattr(encoder, "pos_embed", None)
    if table is None or config.embed_dim % 4:
        raise ConfigError("student.pos_embed=sincos needs an absolute position embedding (a vit_* "
                          "model) and student.embed_dim divisible by 4.")
    patches = build_sincos2d_pos_embed(list(config.grid), config.embed_dim)  # [N, D]
    prefix = table.shape[1] - patches.shape[0]
    with torch.no_grad():
        table.zero_()
        table[0, prefix:] = patches


ENCODER = "encoder."  # the prefix of the encoder's tensors in a Student's state dict


def encoder_weights(state: dict) -> dict:
    """The encoder's tensors from a checkpoint's student state (mask token and head dropped)."""
    return {k[len(ENCODER):]: v for k, v in state["student"].items() if k.startswith(ENCODER)}


def student_weights(encoder: nn.Module) -> dict:
    """An encoder's tensors named as a Student's state dict names them: encoder_weights'
    inverse, for checkpoints of encoders trained outside a Student."""
    return {ENCODER + k: v for k, v in encoder.state_dict().items()}


def trained_encoder(source: Path) -> tuple[nn.Module, dict]:
    """The student encoder saved in `source` (a run directory or checkpoint file), with the
    checkpoint state it came from."""
    state = checkpoint.load_latest(source) if source.is_dir() else checkpoint.load(source)
    if state is None:
        raise MimbenchError(f"'{source}' holds no checkpoint yet.")
    encoder = build_encoder(from_dict(state["config"]).student)
    encoder.load_state_dict(encoder_weights(state))
    return encoder, state


def unfinished(state: dict) -> str | None:
    """'step 3 of 6' for a checkpoint saved before its run's last pre-training step, else None."""
    total = state.get("plan", {}).get("total_steps")
    return f"step {state['step']} of {total}" if total and state["step"] < total else None


def saved_encoder(source, partial: bool = False,
                  accept: str = "evaluate it as it is with --partial (its results then say so)"
                  ) -> tuple[nn.Module, str, str | None]:
    """The encoder saved at `source` (a model_source.ModelSource): an exported folder's timm
    model, or a run's or checkpoint's student encoder, its MIM head dropped; a description for
    cards; and where an unfinished run stopped ('step 3 of 6'; None for a finished one). An
    unfinished run is refused unless `partial`, the sentence ending with how to `accept` it."""
    if source.kind == "exported":
        return timm.create_model(f"local-dir:{source.name}", pretrained=True), f"exported model {source}", None
    encoder, state = trained_encoder(Path(source.name))
    stopped = unfinished(state)
    if stopped and not partial:
        raise MimbenchError(f"'{source}' stopped at {stopped}: its pre-training is unfinished. "
                            f"Finish it with mimbench run --resume {source}, or {accept}.")
    at = f"PARTIAL: {stopped}" if stopped else f"step {state['step']}"
    return encoder, f"{source} ({at})", stopped


def build_student(config: StudentConfig, spec: TargetSpec) -> nn.Module:
    """The student of `config.style`: Student (beit) or MaeStudent (mae)."""
    return MaeStudent(config, spec) if config.style == "mae" else Student(config, spec)


def linear_head(width: int, dim: int) -> nn.Linear:
    head = nn.Linear(width, dim)  # regressor (features) or classifier (tokens)
    nn.init.trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head


class Student(nn.Module):
    """encoder(patches with masked ones replaced by the mask token) -> head -> [B, N, dim]."""

    def __init__(self, config: StudentConfig, spec: TargetSpec):
        super().__init__()
        self.encoder = build_encoder(config)
        if config.pos_embed == "sincos":  # fixed while pre-training; evaluations may tune it
            self.encoder.pos_embed.requires_grad_(False)
        width = self.encoder.embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.head = linear_head(width, spec.dim)
        # after the mask tokens go in: BEiT's blocks (with its shared relative position bias)
        # or timm's ViT's; chosen once, here
        self.through_blocks = beit_blocks if isinstance(self.encoder, Beit) else vit_blocks

    def tokens(self, images: Tensor, mask: Tensor | None = None) -> Tensor:
        """images [B, 3, S, S], mask [B, N] bool -> final normed patch tokens [B, N, width]."""
        enc = self.encoder
        x = enc.patch_embed(images)  # [B, N, width]
        if mask is not None:
            w = mask.unsqueeze(-1).to(x.dtype)  # [B, N, 1]
            x = x * (1 - w) + self.mask_token.to(x.dtype) * w
        return enc.norm(self.through_blocks(enc, x))[:, enc.num_prefix_tokens:]  # [B, N, width]

    def forward(self, images: Tensor, mask: Tensor) -> Tensor:
        return self.head(self.tokens(images, mask))  # [B, N, dim]


class MaeStudent(nn.Module):
    """encoder(visible patches) -> decoder(encoded visible + mask tokens) -> head -> [B, N, dim].

    The encoder is the same timm ViT as a beit student's (same names, so export and the
    evaluations read it alike); the decoder has its own fixed 2-D sin-cos position embedding."""

    def __init__(self, config: StudentConfig, spec: TargetSpec):
        super().__init__()
        self.encoder = build_encoder(config)
        if not isinstance(self.encoder, VisionTransformer) or self.encoder.pos_embed is None:
            raise ConfigError(f"student.style=mae needs a vit_* student with an absolute position "
                              f"embedding, not '{config.model}'.")
        if config.pos_embed == "sincos":
            self.encoder.pos_embed.requires_grad_(False)
        dim = config.decoder_dim
        self.decoder_embed = nn.Linear(self.encoder.embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        pos = build_sincos2d_pos_embed(list(config.grid), dim)[None]  # [1, N, dim]
        self.register_buffer("decoder_pos_embed", pos, persistent=False)
        norm = partial(nn.LayerNorm, eps=1e-6)  # MAE's decoder norms
        self.decoder = nn.Sequential(*[Block(dim, config.decoder_heads, qkv_bias=True, norm_layer=norm)
                                       for _ in range(config.decoder_depth)])
        self.decoder_norm = norm(dim)
        self.head = nn.Linear(dim, spec.dim)  # MAE's decoder_pred
        for module in (self.decoder_embed, self.decoder, self.decoder_norm, self.head):
            module.apply(mae_init)
        nn.init.normal_(self.mask_token, std=0.02)

    def encode_visible(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """images [B, 3, S, S], mask [B, N] bool with the same count per row -> the encoder's
        normed tokens [B, prefix + V, width] (V visible patches, in patch order) and their
        patch indices [B, V]."""
        enc = self.encoder
        x = add_positions(enc, enc.patch_embed(images))  # [B, prefix + N, width]
        prefix = enc.num_prefix_tokens
        visible = (~mask).sum(1)
        if (visible != visible[0]).any():
            raise ValueError("an mae batch needs the same number of masked patches in every image")
        index = (~mask).nonzero()[:, 1].view(len(mask), -1)  # [B, V], ascending per row
        patches = x[:, prefix:].gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :prefix], patches], 1)  # [B, prefix + V, width]
        return enc.norm(enc.blocks(enc.norm_pre(x))), index

    def forward(self, images: Tensor, mask: Tensor) -> Tensor:
        tokens, index = self.encode_visible(images, mask)
        x = self.decoder_embed(tokens)  # [B, prefix + V, dim]
        prefix = self.encoder.num_prefix_tokens
        b, n = mask.shape
        full = self.mask_token.to(x.dtype).expand(b, n, -1)  # [B, N, dim]
        full = full.scatter(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x[:, prefix:])
        x = torch.cat([x[:, :prefix], full + self.decoder_pos_embed.to(x.dtype)], 1)
        x = self.decoder_norm(self.decoder(x))
        return self.head(x[:, prefix:])  # [B, N, spec.dim]


def mae_init(module: nn.Module) -> None:
    """MAE's decoder initialisation: xavier-uniform linear weights, zero biases, unit norms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
