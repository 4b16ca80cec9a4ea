"""Small, independent re-statements of what the published reference code computes, in plain
torch, for tests/test_reference_oracles.py to hold mimbench against.

Each function restates one protocol detail of one reference file (cited in its docstring) in
its own words. They take tensors and plain callables, never mimbench objects, so that a test
can feed them a mimbench model's own parameters and compare the two computations. A transformer
block is passed in as a callable: the block's inside is timm's in every reference, the wiring
around it is what these restate.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BlockFn = Callable[[Tensor, "Tensor | None"], Tensor]  # (tokens, shared attention bias) -> tokens


# ---------------------------------------------------------------- shared pieces

def patchify_embed(images: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The patch embedding of every reference (a conv of kernel = stride = patch side, then the
    grid read row by row): [B, 3, S, S] -> [B, N, D]."""
    side = weight.shape[-1]
    return F.conv2d(images, weight, bias, stride=side).flatten(2).transpose(1, 2)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def beit_relative_position_index(grid: tuple[int, int]) -> Tensor:
    """unilm beit/modeling_finetune.py, RelativePositionBias.__init__: the table row each
    (query, key) pair of a [1 + H*W] token sequence reads. Patch pairs read row
    (dy + H - 1) * (2W - 1) + (dx + W - 1); the last three rows of the table serve
    cls->patch (rows -3), patch->cls (-2) and cls->cls (-1)."""
    h, w = grid
    rows = (2 * h - 1) * (2 * w - 1) + 3
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()  # [N], row-major patch order
    dy = ys[:, None] - ys[None, :] + (h - 1)
    dx = xs[:, None] - xs[None, :] + (w - 1)
    index = torch.empty(h * w + 1, h * w + 1, dtype=torch.long)
    index[1:, 1:] = dy * (2 * w - 1) + dx
    index[0, :] = rows - 3  # the cls token as query
    index[:, 0] = rows - 2  # the cls token as key
    index[0, 0] = rows - 1
    return index


def beit_shared_bias(table: Tensor, grid: tuple[int, int]) -> Tensor:
    """unilm beit/modeling_finetune.py, RelativePositionBias.forward: the [heads, T, T] bias
    that every block's attention adds, gathered from the shared [rows, heads] table."""
    index = beit_relative_position_index(grid).to(table.device)
    t = index.shape[0]
    return table[index.flatten()].view(t, t, -1).permute(2, 0, 1).contiguous()


def vit_tokens(images: Tensor, *, patch_weight: Tensor, patch_bias: Tensor | None, cls_token: Tensor,
               pos_embed: Tensor | None, blocks: Sequence[BlockFn],
               shared_bias: Tensor | None = None) -> Tensor:
    """unilm beit/modeling_finetune.py VisionTransformer.forward_features up to the last block
    (also mae models_vit.py VisionTransformer.forward_features, dino vision_transformer.py
    prepare_tokens + blocks): patches embedded, cls token in front, absolute positions added
    when the model has them, every block run with the shared bias if any. [B, 1 + N, D]."""
    x = patchify_embed(images, patch_weight, patch_bias)
    x = torch.cat([cls_token.expand(len(x), -1, -1), x], 1)
    if pos_embed is not None:
        x = x + pos_embed
    for block in blocks:
        x = block(x, shared_bias)
    return x


# ---------------------------------------------------------------- 1. BEiT pre-training

def beit_mim_forward(images: Tensor, masked: Tensor, *, patch_weight: Tensor, patch_bias: Tensor | None,
                     cls_token: Tensor, mask_token: Tensor, pos_embed: Tensor | None,
                     blocks: Sequence[BlockFn], rel_pos_table: Tensor | None, grid: tuple[int, int],
                     norm_weight: Tensor, norm_bias: Tensor, norm_eps: float,
                     head_weight: Tensor, head_bias: Tensor, all_tokens: bool = False) -> Tensor:
    """unilm beit/modeling_pretrain.py, VisionTransformerForMaskedImageModeling.forward_features
    and .forward. The patch embeddings of masked positions are blended to the mask token
    (m = mask as a float: e * (1 - m) + token * m), cls goes in front, the absolute position
    table is added when the model has one, every block gets the one bias built from the shared
    relative table, the FINAL LayerNorm (eps 1e-6 in beit_base_patch16_224_8k_vocab) normalises
    every token, cls is dropped and lm_head maps the tokens at the masked positions
    ([M, out], M masked patches in the batch, row-major) or, with all_tokens, every patch
    ([B, N, out])."""
    x = patchify_embed(images, patch_weight, patch_bias)
    m = masked.unsqueeze(-1).to(x.dtype)
    x = x * (1 - m) + mask_token.expand_as(x) * m
    x = torch.cat([cls_token.expand(len(x), -1, -1), x], 1)
    if pos_embed is not None:
        x = x + pos_embed
    bias = beit_shared_bias(rel_pos_table, grid) if rel_pos_table is not None else None
    for block in blocks:
        x = block(x, bias)
    x = layer_norm(x, norm_weight, norm_bias, norm_eps)[:, 1:]
    if not all_tokens:
        x = x[masked]
    return F.linear(x, head_weight, head_bias)


# ---------------------------------------------------------------- 2. MAE pre-training

def mae_forward(images: Tensor, masked: Tensor, generator: torch.Generator, *, patch_weight: Tensor,
                patch_bias: Tensor | None, cls_token: Tensor, pos_embed: Tensor,
                blocks: Sequence[Callable[[Tensor], Tensor]], norm: Callable[[Tensor], Tensor],
                decoder_embed: Callable[[Tensor], Tensor], mask_token: Tensor,
                decoder_pos_embed: Tensor, decoder_blocks: Sequence[Callable[[Tensor], Tensor]],
                decoder_norm: Callable[[Tensor], Tensor],
                decoder_pred: Callable[[Tensor], Tensor]) -> Tensor:
    """mae models_mae.py, MaskedAutoencoderViT.random_masking, forward_encoder and
    forward_decoder, with the kept set given by `masked` (True = removed) instead of drawn:
    MAE sorts per-image noise and keeps the lowest; here visible patches get noise in [0, 1)
    and masked ones [1, 2), so the kept set is the visible one, in a random order.

    Encoder: patches + their position rows (pos_embed[:, 1:]), shuffled, the first
    `keep` kept; cls (+ pos_embed[:, :1]) in front; blocks; final norm.
    Decoder: decoder_embed on every token, cls included; mask tokens appended after the kept
    tokens, the sequence put back in patch order by the inverse permutation; cls back in
    front; decoder_pos_embed [1, 1 + N, d] added (its cls row is zeros in MAE); blocks;
    decoder_norm; decoder_pred; cls dropped. Returns [B, N, out] for every patch."""
    b, n = masked.shape
    x = patchify_embed(images, patch_weight, patch_bias) + pos_embed[:, 1:]
    keep = int(n - masked[0].sum())
    noise = torch.rand(b, n, generator=generator).to(x.device) + masked.to(x.dtype)
    order = noise.argsort(1)  # ascending: visible first
    restore = order.argsort(1)
    x = x.gather(1, order[:, :keep, None].expand(-1, -1, x.shape[-1]))
    x = torch.cat([(cls_token + pos_embed[:, :1]).expand(b, -1, -1), x], 1)
    for block in blocks:
        x = block(x)
    x = norm(x)

    x = decoder_embed(x)
    filler = mask_token.expand(b, n - keep, -1)
    rest = torch.cat([x[:, 1:], filler], 1)
    rest = rest.gather(1, restore[..., None].expand(-1, -1, x.shape[-1]))
    x = torch.cat([x[:, :1], rest], 1) + decoder_pos_embed
    for block in decoder_blocks:
        x = block(x)
    return decoder_pred(decoder_norm(x))[:, 1:]


def xavier_uniform_bound(weight: Tensor) -> float:
    """mae models_mae.py, MaskedAutoencoderViT._init_weights: nn.Linear weights are
    xavier_uniform, U(-a, a) with a = sqrt(6 / (fan_in + fan_out)), biases 0 (LayerNorms 1, 0;
    the norm_layer of every mae_vit_* model is LayerNorm with eps 1e-6; mask_token
    normal(std .02) in initialize_weights)."""
    fan_out, fan_in = weight.shape
    return math.sqrt(6.0 / (fan_in + fan_out))


MAE_NORM_EPS = 1e-6
MAE_MASK_TOKEN_STD = 0.02


# ---------------------------------------------------------------- 3. layer decay

def beit_layer_id(name: str, depth: int) -> int:
    """unilm beit/optim_factory.py get_num_layer_for_vit, as LayerDecayValueAssigner calls it
    from run_class_finetuning.py with depth + 2 scales (so num_max_layer = depth + 2):
    cls_token, mask_token, pos_embed (exact names) and patch_embed.* -> 0; the shared
    rel_pos_bias.* -> the last id, depth + 1 (it trains at the head's rate); blocks.i.* ->
    i + 1; everything else (norms, head) -> depth + 1."""
    last = depth + 2 - 1
    if name in ("cls_token", "mask_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("rel_pos_bias"):
        return last
    if name.startswith("blocks"):
        return int(name.split(".")[1]) + 1
    return last


# ---------------------------------------------------------------- 4. shared bias -> per block

def expand_shared_rel_pos_bias(state: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    """unilm beit/run_class_finetuning.py (loading the pre-trained checkpoint into a model
    built with use_rel_pos_bias): the shared rel_pos_bias.relative_position_bias_table is
    cloned into blocks.<i>.attn.relative_position_bias_table for every block and the shared
    key dropped."""
    out = dict(state)
    table = out.pop("rel_pos_bias.relative_position_bias_table")
    for i in range(depth):
        out[f"blocks.{i}.attn.relative_position_bias_table"] = table.clone()
    return out


# ---------------------------------------------------------------- 5. fine-tuning head

def finetune_logits(tokens: Tensor, *, fc_norm_weight: Tensor, fc_norm_bias: Tensor, fc_norm_eps: float,
                    head_weight: Tensor, head_bias: Tensor) -> Tensor:
    """unilm beit/modeling_finetune.py VisionTransformer.forward_features/forward with
    use_mean_pooling (the default of run_class_finetuning.py), and mae models_vit.py
    VisionTransformer.forward_features with global_pool=True: the final norm is gone (Identity
    / deleted), the last block's patch tokens (cls excluded) are averaged, fc_norm normalises
    the average, the linear head classifies. tokens: [B, 1 + N, D] after the last block."""
    pooled = tokens[:, 1:].mean(1)
    return F.linear(layer_norm(pooled, fc_norm_weight, fc_norm_bias, fc_norm_eps), head_weight, head_bias)


# ---------------------------------------------------------------- 6. frozen features

def frozen_last_block_features(tokens: Tensor, norm_weight: Tensor, norm_bias: Tensor, norm_eps: float,
                               pooling: str) -> Tensor:
    """The features a frozen-feature protocol reads from the last block, [B, 1 + N, D] -> [B, D]:
    'cls': mae main_linprobe.py (global_pool False -> models_vit forward_features returns
    norm(x)[:, 0]) and dino eval_knn.py (vision_transformer.py forward: norm(x)[:, 0]);
    'avg': dino eval_linear.py with avgpool_patchtokens (mean over the patch tokens of
    get_intermediate_layers' output, which is norm(x)). Both after the encoder's final norm."""
    x = layer_norm(tokens, norm_weight, norm_bias, norm_eps)
    return x[:, 0] if pooling == "cls" else x[:, 1:].mean(1)


def mae_linprobe_head(dim: int, classes: int) -> nn.Sequential:
    """mae main_linprobe.py: trunc_normal_(head.weight, std=0.01) (timm's, cut at +-2 absolute,
    i.e. effectively untruncated; bias 0 from timm's init), then the head wrapped as
    BatchNorm1d(dim, affine=False, eps=1e-6) -> Linear."""
    linear = nn.Linear(dim, classes)
    nn.init.trunc_normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)


# ---------------------------------------------------------------- 8. mmseg heads

SEG_DROPOUT = 0.1  # mmseg decode_head.py BaseDecodeHead: dropout_ratio 0.1 -> nn.Dropout2d in cls_seg
AUX_CHANNELS_AT_768 = 256  # unilm beit/semantic_segmentation configs: FCNHead channels 256, UPerHead 768


def mmseg_fcn_aux_layers(in_channels: int, channels: int, classes: int) -> list[tuple]:
    """mmseg fcn_head.py FCNHead with num_convs=1, concat_input=False, and decode_head.py
    BaseDecodeHead.cls_seg, as configs/_base_/models/upernet_beit.py sets the auxiliary head
    (in_index 2, BN): the leaf layers in the order they run, as (kind, details) tuples:
    one 3x3 ConvModule (conv without bias, BN, ReLU), Dropout2d(0.1), 1x1 conv_seg."""
    return [("conv", in_channels, channels, 3), ("bn", channels), ("relu",), ("dropout2d", SEG_DROPOUT),
            ("conv", channels, classes, 1)]


def describe_leaf(module: nn.Module) -> tuple:
    """A leaf layer as mmseg_fcn_aux_layers names it (unknown kinds by their class name)."""
    if isinstance(module, nn.Conv2d):
        return ("conv", module.in_channels, module.out_channels, module.kernel_size[0])
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return ("bn", module.num_features)
    if isinstance(module, nn.ReLU):
        return ("relu",)
    if isinstance(module, nn.Dropout2d):
        return ("dropout2d", module.p)
    return (type(module).__name__,)
