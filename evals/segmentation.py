"""Semantic segmentation as BEiT evaluates it: UperNet on four blocks of the backbone."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn

from mimbench.data import build_dataset, check_label_maps
from mimbench.data.seg_augment import augment, rescaled_size
from mimbench.data.views import STUDENT_MEAN, STUDENT_STD, as_pil
from mimbench.distributed import autocast, resolve_device, to_device
from mimbench.errors import ConfigError
from mimbench.evals.backbone import input_size, per_block_rel_pos_bias
from mimbench.evals.data import fingerprint, student_batch
from mimbench.evals.metrics import segmentation_metrics
from mimbench.evals.tower import StageTower
from mimbench.evals.training import endless, set_drop_path, train
from mimbench.optim import param_groups

IGNORE = 255
REFERENCES = {  # docs/protocols.md: ADE20K mIoU, ViT-B/16, UperNet, single scale
    "paper": {"mvp_300ep": 52.4, "beit_300ep_upernet": 45.7, "tolerance": 1.0, "dataset": "ADE20K"},
}


def feature_blocks(depth: int) -> list[int]:
    """BEiT's blocks 3, 5, 7, 11 of 12, scaled to other depths."""
    return [round(depth * k / 12) - 1 for k in (4, 6, 8, 12)]


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class UperHead(nn.Module):
    """Pyramid pooling on the coarsest level + a feature pyramid network, fused at the finest."""

    def __init__(self, cins: list[int], channels: int, classes: int, pool_scales=(1, 2, 3, 6)):
        """cins: the channels of the four levels, finest first."""
        super().__init__()
        self.pool_scales = pool_scales
        self.ppm = nn.ModuleList(conv_bn_relu(cins[3], channels, 1) for _ in pool_scales)
        self.bottleneck = conv_bn_relu(cins[3] + len(pool_scales) * channels, channels)
        self.lateral = nn.ModuleList(conv_bn_relu(cin, channels, 1) for cin in cins[:3])
        self.fpn = nn.ModuleList(conv_bn_relu(channels, channels) for _ in range(3))
        self.fuse = conv_bn_relu(4 * channels, channels)
        self.dropout = nn.Dropout2d(0.1)  # mmseg's decode heads: dropout_ratio 0.1 before conv_seg
        self.classifier = nn.Conv2d(channels, classes, 1)  # PyTorch's init: docs/protocols.md

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        top = levels[3]  # the coarsest level
        pooled = [F.interpolate(conv(F.adaptive_avg_pool2d(top, s)), top.shape[-2:], mode="bilinear",
                                align_corners=False) for s, conv in zip(self.pool_scales, self.ppm)]
        laterals = [conv(x) for conv, x in zip(self.lateral, levels[:3])]
        laterals.append(self.bottleneck(torch.cat([top, *pooled], 1)))
        for i in range(3, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], laterals[i - 1].shape[-2:], mode="bilinear", align_corners=False)
        outs = [conv(x) for conv, x in zip(self.fpn, laterals[:3])] + [laterals[3]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(x, size, mode="bilinear", align_corners=False) for x in outs[1:]]
        return self.classifier(self.dropout(self.fuse(torch.cat(outs, 1))))


class ViTPyramid(nn.Module):
    """A ViT's four evenly spaced blocks -> (4x up, 2x up, identity, 2x down), as BEiT builds it."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.blocks = feature_blocks(len(encoder.blocks))
        d = encoder.embed_dim
        self.necks = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(d, d, 2, 2), nn.BatchNorm2d(d), nn.GELU(),
                          nn.ConvTranspose2d(d, d, 2, 2)),
            nn.ConvTranspose2d(d, d, 2, 2),
            nn.Identity(),
            nn.MaxPool2d(2),
        ])
        self.channels = [d] * 4
        self.described = f"blocks {self.blocks}"

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        unique = sorted(set(self.blocks))  # shallow students repeat blocks
        outs = self.encoder.forward_intermediates(images, indices=unique, intermediates_only=True)
        maps = [outs[unique.index(b)] for b in self.blocks]  # each [B, D, h, w]
        return [neck(x) for neck, x in zip(self.necks, maps)]  # each [B, D, h_i, w_i]


class StagePyramid(nn.Module):
    """A convolutional tower's four stages (evals.tower), a pyramid as they are."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.necks = nn.ModuleList()  # nothing to resample
        self.channels = list(encoder.stage_channels)
        self.described = "stages 1-4"

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder.stages(images)  # each [B, C_i, h_i, w_i]


class Segmenter(nn.Module):
    """Backbone -> a 4-level pyramid -> UperNet; an FCN aux head on level 3 (mmseg's FCNHead:
    one 3x3 conv of `aux_channels`, no input concatenation, dropout 0.1, a 1x1 classifier)."""

    def __init__(self, encoder: nn.Module, classes: int, channels: int, pool_scales,
                 aux_channels: int | None = None):
        super().__init__()
        self.pyramid = StagePyramid(encoder) if isinstance(encoder, StageTower) else ViTPyramid(encoder)
        self.encoder = encoder
        cins = self.pyramid.channels
        self.head = UperHead(cins, channels, classes, pool_scales)
        aux = aux_channels or channels
        self.aux = nn.Sequential(conv_bn_relu(cins[2], aux), nn.Dropout2d(0.1), nn.Conv2d(aux, classes, 1))

    def forward(self, images: torch.Tensor):
        levels = self.pyramid(images)
        size = images.shape[-2:]
        logits = F.interpolate(self.head(levels), size, mode="bilinear", align_corners=False)
        aux = F.interpolate(self.aux(levels[2]), size, mode="bilinear", align_corners=False)
        return logits, aux  # [B, classes, S, S] each


def headline(background: int | None) -> str:
    """The metric a report leads with: where one class is the background (the world), a
    colour threshold gets it right, so the mean over the object classes carries the signal;
    otherwise (ADE20K) the mean over all classes, as BEiT reports it."""
    return "mIoU" if background is None else "mIoU_objects"


def segmentation_source(config, split: str) -> tuple[str, dict]:
    """The dataset name and options of segmentation's `split` ("train" or "val"): ADE20K, or
    the evaluation data with label maps."""
    cfg = config.segmentation
    if cfg.dataset == "ade20k":
        return "ade20k", {"root": cfg.root, "split": "training" if split == "train" else "validation"}
    return config.eval_data.name, {**getattr(config.eval_data, split), "labels": "mask"}


def segmentation_data(config, split: str):
    if config.segmentation.dataset != "ade20k":
        check_label_maps(config)
    name, options = segmentation_source(config, split)
    return build_dataset(name, **options)


def _batch(dataset, indices, size: int):
    images, labels = zip(*(dataset[int(i)] for i in indices))
    x = student_batch(images, size)
    y = torch.stack([torch.from_numpy(np.asarray(lab, dtype=np.int64)) for lab in labels])
    y = F.interpolate(y[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
    return x, y  # [B, 3, S, S], [B, S, S]


def _augmented_batch(dataset, indices, cfg, g: torch.Generator):
    if cfg.crop is None:
        raise ConfigError("segmentation.augment needs segmentation.crop (BEiT: 512).")
    pairs = [augment(*dataset[int(i)], cfg.crop, g, cfg.scale, cfg.ratio_range, cfg.cat_max_ratio)
             for i in indices]
    x = torch.stack([image for image, _ in pairs])
    return x, torch.stack([label for _, label in pairs])  # [B, 3, crop, crop], [B, crop, crop]


@torch.no_grad()
def predict(model: Segmenter, images: torch.Tensor, crop: int | None, stride: int | None, classes: int):
    """[B, 3, H, W] -> [B, classes, H, W] logits: whole images, or the average over sliding
    windows of side `crop` every `stride` pixels (the last window flush with the border; a
    window past a border, on a side shorter than `crop`, is zero padded as in training)."""
    if crop is None:
        return model(images)[0]
    b, _, h, w = images.shape
    total = images.new_zeros(b, classes, h, w)
    count = images.new_zeros(1, 1, h, w)
    for top in sorted({*range(0, max(h - crop, 0) + 1, stride), max(h - crop, 0)}):
        for left in sorted({*range(0, max(w - crop, 0) + 1, stride), max(w - crop, 0)}):
            window = images[..., top:top + crop, left:left + crop]
            wh, ww = window.shape[-2:]
            padded = F.pad(window, (0, crop - ww, 0, crop - wh))  # right and bottom
            total[..., top:top + wh, left:left + ww] += model(padded)[0][..., :wh, :ww]
            count[..., top:top + wh, left:left + ww] += 1
    return total / count


def test_image(image, cfg) -> torch.Tensor:
    """BEiT's single-scale test view: keep-ratio rescale to `scale` (ADE20K: short side 512),
    normalised as the student's views, [1, 3, h, w]."""
    pil = as_pil(image)
    resized = pil.resize(rescaled_size(pil.size, cfg.scale), Image.BILINEAR)
    return TF.normalize(TF.to_tensor(resized), STUDENT_MEAN, STUDENT_STD)[None]


def validate(model: nn.Module, val_set, classes: int, config, size: int, device, progress=None):
    """The model's predicted label maps on the val split at the labels' resolution, and those
    labels: whole images at the student's size in batches, or (segmentation.crop) sliding
    windows over one keep-ratio image at a time."""
    cfg = config.segmentation
    preds, labels = [], []
    window = max(1, cfg.batch_size) if cfg.crop is None else 1
    for start in range(0, len(val_set), window):
        items = [val_set[i] for i in range(start, min(start + window, len(val_set)))]
        if cfg.crop is None:
            images = student_batch([image for image, _ in items], size)
        else:
            images = test_image(items[0][0], cfg)
        with autocast(device, config.optim.amp):
            logits = predict(model, to_device(images, device), cfg.crop, cfg.stride, classes)
        logits = logits.float().cpu()  # [b, classes, h, w]
        for (_, label), logit in zip(items, logits):
            label = np.asarray(label)
            logit = F.interpolate(logit[None], size=label.shape, mode="bilinear", align_corners=False)
            preds.append(logit[0].argmax(0).numpy())
            labels.append(label)
        if progress:
            progress("segmentation val", len(preds), len(val_set), {})
    return preds, labels


def segmentation(encoder, config, source: str, progress=None, preset: str | None = None) -> dict:
    """Fine-tune backbone + UperNet on the train split; mIoU on val at the labels' resolution."""
    cfg = config.segmentation
    train_set, val_set = segmentation_data(config, "train"), segmentation_data(config, "val")
    classes = train_set.num_classes
    size = input_size(encoder, config)
    torch.manual_seed(config.run.seed)
    encoder = per_block_rel_pos_bias(encoder)  # BEiT's segmentation: one table per block
    if cfg.crop is not None and cfg.crop != size:  # BEiT: built at 224, fine-tuned on 512 crops
        encoder.set_input_size(img_size=(cfg.crop, cfg.crop))  # position embeddings/biases resampled
    set_drop_path(encoder, cfg.drop_path)
    device = resolve_device(config.run.device)
    model = Segmenter(encoder, classes, cfg.channels, cfg.pool_scales, cfg.aux_channels).to(device)
    groups = param_groups(model.encoder, cfg.weight_decay, cfg.layer_decay,
                          head=nn.ModuleList([model.pyramid.necks, model.head, model.aux]))
    g = torch.Generator().manual_seed(config.run.seed)

    def epoch_batches(epoch):
        order = torch.randperm(len(train_set), generator=g)
        for i in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size):
            indices = order[i:i + cfg.batch_size]
            yield _augmented_batch(train_set, indices, cfg, g) if cfg.augment else \
                _batch(train_set, indices, size)

    def loss_fn(m, batch):
        x, y = batch
        logits, aux = m(x)
        return F.cross_entropy(logits, y, ignore_index=IGNORE) + \
            cfg.aux_weight * F.cross_entropy(aux, y, ignore_index=IGNORE)

    losses = train(model, groups, endless(epoch_batches), loss_fn, cfg.steps, cfg.lr,
                   cfg.warmup_steps, "poly", cfg.poly_power, progress, "segmentation",
                   amp=config.optim.amp, device_batch=cfg.device_batch)
    preds, labels = validate(model, val_set, classes, config, size, device, progress)
    background = getattr(val_set, "background_class", None)
    metrics = segmentation_metrics(preds, labels, classes, IGNORE, background)
    card = {"protocol": "BEiT UperNet", **dataclasses.asdict(cfg),
            "headline": headline(background),
            "features": model.pyramid.described, "model": source, "classes": classes,
            "inference": "whole image at the student's size" if cfg.crop is None else
            f"keep-ratio rescale to {tuple(cfg.scale)}, sliding window {cfg.crop}/{cfg.stride}",
            "encoder_input": cfg.crop or size,
            "train": {"size": len(train_set), "fingerprint": fingerprint(train_set, "seg-train", {})},
            "val": {"size": len(val_set), "fingerprint": fingerprint(val_set, "seg-val", {})},
            "final_train_loss": losses[-1], "seed": config.run.seed,
            "reference": REFERENCES.get(preset)}
    return {**metrics, "card": card}
