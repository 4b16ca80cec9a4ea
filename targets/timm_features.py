"""Any timm model as a frozen feature teacher (DINO, supervised ViT, ...)."""

from __future__ import annotations

from torch import Tensor

from mimbench.errors import ConfigError, WeightsUnavailableError
from mimbench.targets import register_target
from mimbench.targets.base import TargetSpec
from mimbench.targets.frozen import FrozenFeatures, block_index
from mimbench.weights import local_file, mismatch, require_network


@register_target("timm", kind="features")
def timm_target(model: str = "vit_base_patch16_224.dino", weights: str | None = None,
                layer: int = -1, normalize: str = "none", input_size: int | None = None,
                loss: str = "cosine") -> FrozenFeatures:
    """Patch tokens of a frozen timm ViT (DINO, supervised, ...).

    Block `layer` of the model.

    weights: a local file (.safetensors or .pth state dict), 'hub' for timm's pretrained
    download, or None for random weights (a random-teacher baseline).
    """
    import timm

    path = local_file(weights)
    kwargs = {} if input_size is None else {"img_size": input_size}
    try:
        if path is not None:
            net = timm.create_model(model, pretrained=True, num_classes=0,
                                    pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        elif weights == "hub":
            net = _from_hub(timm, model, kwargs)
        elif weights is None:
            net = timm.create_model(model, pretrained=False, num_classes=0, **kwargs)
        else:
            raise ConfigError(f"target.weights={weights!r} is neither a file, 'hub' nor null.")
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ConfigError(f"timm has no model '{model}'; see timm.list_models().") from None
        raise mismatch(e, weights, model) or e from None
    if not hasattr(net, "forward_intermediates") or not hasattr(net, "patch_embed"):
        raise ConfigError(f"timm model '{model}' has no patch tokens; use a ViT-like model.")
    index = block_index(layer, len(net.blocks), f"timm model '{model}'")

    def extract(x: Tensor) -> Tensor:
        return net.forward_intermediates(x, indices=[index], stop_early=True,
                                         intermediates_only=True, output_fmt="NLC")[0]  # [B, N, D]

    cfg = net.pretrained_cfg
    grid = tuple(net.patch_embed.grid_size)
    size = net.patch_embed.img_size[0]
    spec = TargetSpec(kind="features", dim=net.embed_dim, grid=grid, input_size=size,
                      interpolation=cfg.get("interpolation", "bicubic"), loss=loss)
    return FrozenFeatures(net, extract, spec, cfg.get("mean", (0.485, 0.456, 0.406)),
                          cfg.get("std", (0.229, 0.224, 0.225)), normalize)


def _from_hub(timm, model: str, kwargs: dict):
    cfg = timm.models.get_pretrained_cfg(model.split(".")[0] if "." not in model else model)
    repo = getattr(cfg, "hf_hub_id", None) if cfg else None
    url = f"https://huggingface.co/{repo}" if repo else (getattr(cfg, "url", None) or "https://huggingface.co")
    from huggingface_hub import try_to_load_from_cache

    cached = repo and isinstance(try_to_load_from_cache(repo, "model.safetensors"), str)
    if not cached:
        require_network(f"the timm weights for {model}", url)
    try:
        return timm.create_model(model, pretrained=True, num_classes=0, **kwargs)
    except Exception as e:
        raise WeightsUnavailableError(f"could not load hub weights for {model} ({e}); pass a local "
                                      f"file with --set target.weights=/path/to/file.") from None
