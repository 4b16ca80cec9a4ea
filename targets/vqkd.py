"""BEiT v2's VQ-KD tokenizer as a token target: a ViT encoder, a projection into a small code
space, the nearest entry of an L2-normalised codebook (cosine), and, for training only, a
decoder that reconstructs a teacher's features from the codes.

The module's tensor names follow the released checkpoints (`encoder.*`, `encode_task_layer.*`,
`quantize.embedding.weight`, `decoder.*`, `decode_task_layer.*`), so an official file loads
as it is; the encoder and decoder are timm's BEiT, whose names match BEiT v2's own.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mimbench.errors import ConfigError, WeightsUnavailableError
from mimbench.targets import register_target
from mimbench.targets.base import TargetSpec
from mimbench.targets.frozen import FrozenTeacher
from mimbench.weights import official_or_local

OFFICIAL_URL = ("https://conversationhub.blob.core.windows.net/beit-share-public/beitv2/"
                "vqkd_encoder_base_decoder_3x768x12_clip-d5036aa7.pth")
# the released tokenizer: ViT-B/16 encoder at 224 px, 8192 codes of 32 dims, a 3-block decoder
# reconstructing CLIP ViT-B/16's 512-d features
OFFICIAL_SHAPE = {"img_size": 224, "patch_size": 16, "width": 768, "depth": 12, "heads": 12,
                  "codebook_size": 8192, "code_dim": 32, "decoder_depth": 3, "out_dim": 512}


def beit_tower(img_size: int, patch_size: int, in_chans: int, width: int, depth: int, heads: int):
    """A ViT as BEiT v2's tokenizer builds it (absolute positions, no relative bias, no layer
    scale, mean pooling: its patch tokens leave through `fc_norm`), no classifier."""
    from timm.models.beit import Beit

    return Beit(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
                embed_dim=width, depth=depth, num_heads=heads, use_abs_pos_emb=True,
                use_rel_pos_bias=False, use_shared_rel_pos_bias=False, init_values=None,
                global_pool="avg")


def patch_tokens(tower: nn.Module, x: Tensor) -> Tensor:
    """[B, C, S, S] -> the tower's patch tokens [B, N, width], through its fc_norm."""
    return tower.fc_norm(tower.forward_features(x)[:, 1:])


def task_layer(cin: int, cout: int) -> nn.Sequential:
    """BEiT v2's decode task layer, its linears initialised as BEiT v2's _init_weights does."""
    first, last = nn.Linear(cin, cin), nn.Linear(cin, cout)
    for linear in (first, last):
        nn.init.trunc_normal_(linear.weight, std=0.02)
        nn.init.zeros_(linear.bias)
    return nn.Sequential(first, nn.Tanh(), last)


class CodeTable(nn.Module):
    """The codebook and its EMA statistics, as tensors named like the released files."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("weight", F.normalize(torch.randn(size, dim), dim=1))  # [K, d]
        self.register_buffer("cluster_size", torch.zeros(size))
        self.register_buffer("embed_avg", self.weight.clone())
        self.register_buffer("initted", torch.zeros(1))


class NormEMAQuantizer(nn.Module):
    """Nearest code by cosine in an L2-normalised codebook, moved by an exponential moving
    average of the normalised mean of the vectors assigned to it (BEiT v2's quantiser)."""

    def __init__(self, size: int, dim: int, decay: float = 0.99):
        super().__init__()
        self.embedding = CodeTable(size, dim)
        self.register_buffer("cluster_size", torch.zeros(size))  # EMA of each code's use
        self.decay = decay

    def nearest(self, z: Tensor) -> Tensor:
        """[M, d] L2-normalised -> code ids [M]: the least squared distance, written as the
        released code computes it (|z|^2 is the same for every code and dropped)."""
        codes = self.embedding.weight
        return (codes.square().sum(1) - 2 * z @ codes.T).argmin(1)

    @torch.no_grad()
    def init_by_kmeans(self, z: Tensor, iterations: int = 10, generator=None) -> None:
        """Spherical k-means on a first batch [M, d]: codes start where the data is."""
        size = self.embedding.weight.shape[0]
        pick = torch.randint(0, len(z), (size,), generator=generator)
        means = z[pick]
        for _ in range(iterations):
            assigned = (z @ means.T).argmax(1)
            sums = torch.zeros_like(means).index_add_(0, assigned, z)
            counts = torch.bincount(assigned, minlength=size)
            means = torch.where((counts > 0)[:, None], F.normalize(sums, dim=1), means)
        self.embedding.weight.copy_(means)
        self.embedding.initted.fill_(1)

    @torch.no_grad()
    def ema_update(self, z: Tensor, ids: Tensor) -> None:
        """Move each code used by this batch toward its vectors' normalised mean; an unused
        code stays where it is (the released code's dead-code rule: no restart)."""
        size = self.embedding.weight.shape[0]
        counts = torch.bincount(ids, minlength=size).to(z.dtype)  # [K]
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        sums = torch.zeros_like(self.embedding.weight).index_add_(0, ids, z)  # [K, d]
        means = F.normalize(sums / counts.clamp_min(1)[:, None], dim=1)
        means = torch.where((counts > 0)[:, None], means, self.embedding.weight)
        moved = self.embedding.weight * self.decay + means * (1 - self.decay)
        self.embedding.weight.copy_(F.normalize(moved, dim=1))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[B, N, d] -> quantised vectors [B, N, d] (straight-through), ids [B, N] and the
        commitment loss (BEiT v2's beta = 1)."""
        z = F.normalize(z, dim=-1)
        flat = z.reshape(-1, z.shape[-1])
        if self.training and not self.embedding.initted.item():
            self.init_by_kmeans(flat.detach())
        ids = self.nearest(flat)
        quantised = self.embedding.weight[ids].view_as(z)  # the codes as they were: then the update
        if self.training:
            self.ema_update(flat.detach(), ids)
        commitment = F.mse_loss(quantised.detach(), z)
        return z + (quantised - z).detach(), ids.view(z.shape[:-1]), commitment


class VQKD(nn.Module):
    """encoder -> codes; codes -> decoder -> the teacher's features (VQ-KD)."""

    def __init__(self, img_size: int, patch_size: int, width: int, depth: int, heads: int,
                 codebook_size: int, code_dim: int, decoder_depth: int, out_dim: int,
                 decay: float = 0.99):
        super().__init__()
        if not isinstance(codebook_size, int) or isinstance(codebook_size, bool) or codebook_size < 1:
            raise ConfigError(f"the VQ-KD codebook size must be a positive integer, not {codebook_size!r}.")
        self.shape = dict(img_size=img_size, patch_size=patch_size, width=width, depth=depth,
                          heads=heads, codebook_size=codebook_size, code_dim=code_dim,
                          decoder_depth=decoder_depth, out_dim=out_dim)
        side = img_size // patch_size
        self.grid = (side, side)
        self.encoder = beit_tower(img_size, patch_size, 3, width, depth, heads)
        self.encode_task_layer = task_layer(width, code_dim)
        self.quantize = NormEMAQuantizer(codebook_size, code_dim, decay)
        self.decoder = beit_tower(side, 1, code_dim, width, decoder_depth, heads)
        self.decode_task_layer = task_layer(width, out_dim)

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """images [B, 3, S, S] in [0, 1] -> quantised codes [B, N, d], ids [B, N], commitment."""
        x = images * 2 - 1  # the released tokenizer's input range, [-1, 1]
        return self.quantize(self.encode_task_layer(patch_tokens(self.encoder, x)))

    def decode(self, quantised: Tensor) -> Tensor:
        """[B, N, d] -> reconstructed teacher features [B, N, out_dim]."""
        b, n, d = quantised.shape
        grid = quantised.transpose(1, 2).reshape(b, d, *self.grid)  # the decoder's 1x1 patches
        return self.decode_task_layer(patch_tokens(self.decoder, grid))


def reconstruction_loss(reconstructed: Tensor, target: Tensor) -> Tensor:
    """VQ-KD's loss: 1 - cosine similarity per position, averaged."""
    return (1 - F.cosine_similarity(reconstructed, target.float(), dim=-1)).mean()


def load_vqkd(path: Path, shape: dict) -> VQKD:
    """A VQKD of `shape` from a released-format checkpoint ({'model': state} or a plain
    state dict; the teacher and loss tensors it may carry are ignored)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsUnavailableError(f"'{path}' is not a readable VQ-KD checkpoint ({e}).") from None
    state = saved.get("model", saved.get("state_dict", saved)) if isinstance(saved, dict) else None
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"'{path}' holds no state dict of a VQ-KD tokenizer.")
    state = {k: v for k, v in state.items() if not k.startswith(("teacher", "scaling", "loss"))}
    model = VQKD(**shape)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        named = "; ".join(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                          for label, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("other shapes", wrong)) if keys)
        raise WeightsUnavailableError(
            f"'{path}' is not a VQ-KD tokenizer of the expected shape {shape} ({named}).")
    model.load_state_dict(state)
    return model


@register_target("vqkd", kind="tokens")
class VQKDTarget(FrozenTeacher):
    """BEiT v2's VQ-KD token ids: the nearest code of each patch of the teacher view.

    weights: 'official' (downloads BEiT v2's released CLIP-distilled tokenizer once) or a local
        checkpoint in the released format.
    shape: the tokenizer's architecture when it is not the released one (the in-project
        teachers pass theirs): img_size, patch_size, width, depth, heads, codebook_size,
        code_dim, decoder_depth, out_dim.
    grid: the student's patch grid (filled in by mimbench); the tokenizer's own must equal it.
    """

    def __init__(self, weights: str = "official", shape: dict | None = None,
                 grid: tuple[int, int] | None = None, interpolation: str = "bicubic",
                 loss: str = "ce"):
        super().__init__()
        shape = {**OFFICIAL_SHAPE, **(shape or {})}
        path = official_or_local(weights, "BEiT v2's VQ-KD tokenizer weights", OFFICIAL_URL,
                                 f"beitv2/{Path(OFFICIAL_URL).name}")
        tokenizer = load_vqkd(path, shape)
        if grid is not None and tuple(grid) != tokenizer.grid:
            g = tokenizer.grid
            raise ConfigError(f"the VQ-KD tokenizer gives a {g[0]}x{g[1]} token grid but the "
                              f"student has {grid[0]}x{grid[1]} patches; tokens cannot be "
                              f"resampled: match student.img_size / student.patch_size to it.")
        tokenizer.decoder = tokenizer.decode_task_layer = None  # tokens need the encoder only
        self.tokenizer = tokenizer
        self.spec = TargetSpec(kind="tokens", dim=shape["codebook_size"], grid=tokenizer.grid,
                               input_size=shape["img_size"], interpolation=interpolation, loss=loss)
        self.freeze()

    def teach(self, view: Tensor) -> Tensor:
        return self.tokenizer.encode(view.float())[1]  # [B, N] int64
