"""CLIP's image encoder (open_clip) as a feature target: MVP's choice."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from mimbench.errors import ConfigError, WeightsUnavailableError
from mimbench.targets import register_target
from mimbench.targets.base import TargetSpec
from mimbench.targets.frozen import FrozenFeatures, block_index
from mimbench.weights import local_file, mismatch, require_network

log = logging.getLogger(__name__)
HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@register_target("clip", kind="features")
def clip_target(model: str = "ViT-B-16", weights: str | None = "openai", layer: int = -1,
                project: bool = False, normalize: str = "none", quick_gelu: bool | None = None,
                input_size: int | None = None, loss: str = "cosine") -> FrozenFeatures:
    """Patch features of an open_clip image tower (MVP).

    model: an open_clip name (ViT-B-16) or 'local-dir:/folder' holding open_clip_config.json.
    weights: a pretrained tag ('openai'), a local file, or None for random weights.
    layer: zero-based block (ViT) or stage (ResNet: 0 is the stem), negative from the end.
    project: ViT only; apply ln_post and proj to the block's tokens.
    quick_gelu: None means true exactly for 'openai' weights, as OpenAI trained them.
    """
    import open_clip

    quick = (weights == "openai") if quick_gelu is None else quick_gelu
    checkpoint = None
    if weights is not None and not model.startswith("local-dir:"):
        checkpoint = local_file(weights) or _hub_weights(open_clip, model, weights)
    try:
        net = open_clip.create_model(model, pretrained=str(checkpoint) if checkpoint else None,
                                     force_quick_gelu=quick, device="cpu")
    except RuntimeError as e:
        if "not found" in str(e) and "Model config" in str(e):
            raise ConfigError(f"open_clip has no model '{model}'; see open_clip.list_models().") from None
        raise mismatch(e, weights, model) or e from None
    visual = net.visual.eval()  # before any forward: a ResNet tower's BatchNorm must not update
    size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
    size = input_size or size
    if isinstance(visual, open_clip.modified_resnet.ModifiedResNet):
        extract, grid, dim = _resnet_extract(visual, layer, project, size)
    else:
        extract, grid, dim = _vit_extract(visual, layer, project, size)
    mean = getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    spec = TargetSpec(kind="features", dim=dim, grid=grid, input_size=size,
                      interpolation="bicubic", loss=loss)
    return FrozenFeatures(visual, extract, spec, mean, std, normalize)


def _vit_extract(visual, layer: int, project: bool, size: int):
    depth = len(visual.transformer.resblocks)
    index = block_index(layer, depth, "this CLIP tower")
    patch = visual.patch_size[0]
    width = visual.transformer.width

    def extract(x: Tensor) -> Tensor:
        out = visual.forward_intermediates(x, indices=[index], stop_early=True,
                                           intermediates_only=True, output_fmt="NLC")
        tokens = out["image_intermediates"][0]  # [B, N, width], class token removed
        if project:
            tokens = visual.ln_post(tokens) @ visual.proj  # [B, N, embed_dim]
        return tokens

    dim = visual.proj.shape[1] if project else width
    return extract, (size // patch, size // patch), dim


def _resnet_extract(visual, layer: int, project: bool, size: int):
    if project:
        raise ConfigError("target.project=true needs a ViT CLIP tower; a ResNet tower pools "
                          "with attention and has no per-patch projection.")
    index = block_index(layer, 5, "this CLIP ResNet tower (stem + 4 stages)")
    with torch.no_grad():
        probe = visual.forward_intermediates(torch.zeros(1, 3, size, size), indices=[index],
                                             stop_early=True, intermediates_only=True)
    _, dim, h, w = probe["image_intermediates"][0].shape

    def extract(x: Tensor) -> Tensor:
        out = visual.forward_intermediates(x, indices=[index], stop_early=True,
                                           intermediates_only=True)
        fmap = out["image_intermediates"][0]  # [B, C, h, w]
        return fmap.flatten(2).transpose(1, 2)  # [B, h*w, C]

    return extract, (h, w), dim


def _hub_weights(open_clip, model: str, tag: str):
    """The cached or downloaded file for an open_clip pretrained tag; fails fast offline."""
    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise ConfigError(f"'{tag}' is neither a file nor a pretrained tag of {model}"
                          f"{' (tags: ' + ', '.join(tags) + ')' if tags else ''}; "
                          f"pass a local file with --set target.weights=/path/to/file.")
    repo = cfg.get("hf_hub", "").rstrip("/")
    if repo:
        from huggingface_hub import try_to_load_from_cache

        for name in HF_FILES:
            cached = try_to_load_from_cache(repo, name)
            if isinstance(cached, str):
                return cached
        url = f"https://huggingface.co/{repo}/resolve/main/{HF_FILES[0]}"
    else:
        url = cfg["url"]
    require_network(f"the CLIP weights {model}/{tag}", url)
    log.info("downloading CLIP weights %s/%s", model, tag)
    try:
        return open_clip.download_pretrained(cfg)
    except Exception as e:  # the hub answered but would not serve the file
        raise WeightsUnavailableError(f"could not download {url} ({e}); pass a local file with "
                                      f"--set target.weights=/path/to/file.") from None
