"""Raw pixels of each patch as the target (MAE / SimMIM), optionally normalised per patch."""

from __future__ import annotations

from torch import Tensor

from mimbench.targets import register_target
from mimbench.targets.base import TargetSpec
from mimbench.targets.frozen import FrozenTeacher


def patchify(images: Tensor, patch: int) -> Tensor:
    """[B, C, H, W] -> [B, N, patch * patch * C], patches in row-major order."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


@register_target("pixels", kind="features")
class PixelTarget(FrozenTeacher):
    """Raw pixels of each patch (MAE, SimMIM).

    RGB values in [0, 1]; with `normalize`, standardised per patch as MAE's norm_pix_loss
    (eps 1e-6 inside the square root)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, normalize: bool = True,
                 loss: str = "mse"):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        side = img_size // patch_size
        self.patch_size = patch_size
        self.normalize = normalize
        self.spec = TargetSpec(kind="features", dim=3 * patch_size**2, grid=(side, side),
                               input_size=img_size, loss=loss)
        self.freeze()

    def teach(self, view: Tensor) -> Tensor:
        x = patchify(view.float(), self.patch_size)  # [B, N, p*p*3]
        if self.normalize:
            mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True)
            x = (x - mean) / (var + 1e-6).sqrt()
        return x
