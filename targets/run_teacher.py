"""A mimbench run's student, an exported timm folder, or the student's architecture at random
init, as a frozen feature teacher: dBOT's bootstrapped teacher (arXiv 2209.03917), where stage
k regresses the features of stage k-1's student and stage 0 those of a random-init network."""

from __future__ import annotations

import torch
from torch import Tensor

from mimbench.data.views import STUDENT_MEAN, STUDENT_STD
from mimbench.errors import ConfigError
from mimbench.model_source import ModelSource
from mimbench.config import StudentConfig
from mimbench.student import build_encoder, saved_encoder
from mimbench.targets import register_target
from mimbench.targets.base import TargetSpec
from mimbench.targets.frozen import FrozenFeatures, block_index


@register_target("run", kind="features")
def run_target(path: str | None = None, layer: int = -1, normalize: str = "none", loss: str = "mse",
               partial: bool = False, seed: int = 0, student: StudentConfig | None = None) -> FrozenFeatures:
    """Patch tokens of block `layer` of the encoder at `path`: a run directory (its latest
    checkpoint), a checkpoint file, an exported folder (mimbench export), or `random`: the
    student's architecture initialised with `seed`. The teacher sees the student's view,
    normalised as the student's; `partial` accepts a run stopped before its last step."""
    if path is None:
        raise ConfigError("the run target needs the teacher: --set target.path=RUN_DIR (a run "
                          "directory, a checkpoint file, an exported folder, or random).")
    if path == "random":
        with torch.random.fork_rng():  # the caller's random stream (the student's init) stays as it was
            torch.manual_seed(seed)
            encoder = build_encoder(student)
    else:
        source = ModelSource.parse(path)
        if source.kind not in ("run", "checkpoint", "exported"):
            raise ConfigError(f"target.path={path!r} is not a run directory, checkpoint, exported folder "
                              f"or random.")
        encoder, _, _ = saved_encoder(source, partial, accept="use it as it is with --set target.partial=true")
    index = block_index(layer, len(encoder.blocks), f"the encoder in '{path}'")

    def extract(x: Tensor) -> Tensor:  # [B, N, D]: block `index`'s patch tokens, no class token
        return encoder.forward_intermediates(x, indices=[index], stop_early=True, intermediates_only=True,
                                             output_fmt="NLC")[0]

    size = encoder.patch_embed.img_size[0]
    spec = TargetSpec(kind="features", dim=encoder.embed_dim, grid=tuple(encoder.patch_embed.grid_size),
                      input_size=size, interpolation="bicubic", loss=loss)
    return FrozenFeatures(encoder, extract, spec, STUDENT_MEAN, STUDENT_STD, normalize)
