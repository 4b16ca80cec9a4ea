"""DALL-E's discrete VAE encoder as a token target: BEiT's choice."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from torch import Tensor, nn

from mimbench.errors import ConfigError, WeightsUnavailableError
from mimbench.targets import register_target
from mimbench.targets.base import TargetSpec
from mimbench.targets.frozen import FrozenTeacher
from mimbench.weights import official_or_local

OFFICIAL_URL = "https://cdn.openai.com/dall-e/encoder.pkl"
LOGIT_LAPLACE_EPS = 0.1
DOWNSAMPLE = 8  # the d-VAE encoder's stride


def map_pixels(x: Tensor, eps: float = LOGIT_LAPLACE_EPS) -> Tensor:
    """DALL-E's input map from [0, 1] to [eps, 1 - eps]."""
    return (1 - 2 * eps) * x + eps


ARCHITECTURE = ("n_hid", "n_blk_per_group", "input_channels", "vocab_size")  # dall_e.Encoder's shape


def save_encoder(encoder: nn.Module, path: Path) -> None:
    """A dall_e Encoder as a safetensors state dict, its shape in the file's metadata (one JSON
    entry: safetensors orders several metadata keys differently from process to process)."""
    from safetensors.torch import save_file

    shape = json.dumps({name: getattr(encoder, name) for name in ARCHITECTURE}, sort_keys=True)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(path),
              metadata={"dall_e.Encoder": shape})


def _pickled_encoder_classes() -> list[type]:
    """The classes OpenAI's encoder.pkl (a whole pickled dall_e.Encoder) names; `torch.load`
    with weights_only=True builds these and tensors, and refuses any other global, so loading a
    pickle runs no code from the file (no published hash of encoder.pkl exists to check against)."""
    import dall_e
    from dall_e.encoder import EncoderBlock
    from dall_e.utils import Conv2d

    return [dall_e.Encoder, EncoderBlock, Conv2d, nn.Sequential, nn.ReLU, nn.MaxPool2d, nn.Identity]


def _unexpected_globals(path) -> list[str]:
    allowed = {f"{c.__module__}.{c.__qualname__}" for c in _pickled_encoder_classes()}
    try:
        return [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if g not in allowed]
    except Exception:
        return []


def load_encoder(path) -> nn.Module:
    """A dall_e Encoder from a file: a safetensors state dict written by `save_encoder` (the
    in-project teachers; nothing is unpickled), or a whole pickled module as OpenAI's
    encoder.pkl, unpickled with an allowlist of dall_e's and torch's classes (no code runs)."""
    import dall_e

    if str(path).endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                shape = json.loads((f.metadata() or {})["dall_e.Encoder"])
                state = {k: f.get_tensor(k) for k in f.keys()}
            encoder = dall_e.Encoder(**{name: shape[name] for name in ARCHITECTURE})
            encoder.load_state_dict(state)
        except Exception as e:
            raise WeightsUnavailableError(f"'{path}' is not a d-VAE encoder saved by mimbench "
                                          f"({e}); rebuild it with mimbench teachers build.") from None
        return encoder
    try:
        with torch.serialization.safe_globals(_pickled_encoder_classes()):
            encoder = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        strangers = _unexpected_globals(path)
        raise WeightsUnavailableError(
            f"'{path}' is not an OpenAI-format d-VAE encoder pickle: it names "
            f"{', '.join(strangers) or 'objects'} beyond dall_e's Encoder and torch's layers, and "
            f"mimbench unpickles nothing else.") from None
    except Exception as e:
        raise WeightsUnavailableError(f"'{path}' is not a readable d-VAE encoder pickle ({e}); "
                                      f"rebuild it or download {OFFICIAL_URL} again.") from None
    if not isinstance(encoder, dall_e.Encoder):
        raise ConfigError(f"'{path}' holds a {type(encoder).__name__}, not a dall_e Encoder.")
    return encoder


@register_target("dvae", kind="tokens")
class DVAETarget(FrozenTeacher):
    """DALL-E d-VAE token ids (BEiT).

    argmax(encoder(map_pixels(view))) of a dall_e Encoder, one token per 8x8 pixels.

    weights: 'official' (downloads OpenAI's encoder.pkl once), a local pickled Encoder, or an
        encoder.safetensors written by mimbench (the in-project teachers).
    input_size: side of the teacher view; by default 8x the student's grid (112 for 14x14).
    """

    def __init__(self, weights: str = "official", input_size: int | None = None,
                 grid: tuple[int, int] = (14, 14), interpolation: str = "lanczos",
                 loss: str = "ce"):
        super().__init__()
        self.encoder = load_encoder(official_or_local(weights, "the DALL-E d-VAE encoder weights",
                                                      OFFICIAL_URL, "dall_e/encoder.pkl"))
        size = input_size or DOWNSAMPLE * grid[0]
        side = size // DOWNSAMPLE
        self.spec = TargetSpec(kind="tokens", dim=self.encoder.vocab_size, grid=(side, side),
                               input_size=size, interpolation=interpolation, loss=loss)
        self.freeze()

    def teach(self, view: Tensor) -> Tensor:
        logits = self.encoder(map_pixels(view.float()))  # [B, vocab, h, w]
        return logits.argmax(1).flatten(1)  # [B, h*w] int64
