"""Full fine-tuning for classification: BEiT's recipe (layer decay, drop path, label smoothing,
optional mixup/cutmix), average-pooled patch tokens into a linear classifier."""

from __future__ import annotations

import dataclasses
import random

import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from mimbench.data import build_dataset
from mimbench.distributed import autocast, resolve_device, to_device
from mimbench.errors import DataError
from mimbench.evals.backbone import input_size, per_block_rel_pos_bias
from mimbench.evals.data import (CentreView, FinetuneAugmentation, class_card, eval_splits,
                                 fingerprint, labelled_batches)
from mimbench.evals.training import endless, set_drop_path, train
from mimbench.optim import in_steps, param_groups

REFERENCES = {  # docs/protocols.md: ImageNet-1k fine-tuning top-1, ViT-B/16
    "paper": {"mvp_300ep": 84.4, "beit_800ep": 83.2, "tolerance": 0.5, "dataset": "ImageNet-1k"},
}


class Classifier(nn.Module):
    """BEiT's and MAE's fine-tuning model: the encoder without its final norm, its patch tokens
    averaged, a LayerNorm on the average (fc_norm), a linear head."""

    def __init__(self, encoder: nn.Module, classes: int):
        super().__init__()
        encoder.norm = nn.Identity()  # BEiT/MAE fine-tune with mean pooling: norm after pooling
        self.encoder = encoder
        self.fc_norm = nn.LayerNorm(encoder.embed_dim, eps=1e-6)
        self.head = nn.Linear(encoder.embed_dim, classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # BEiT: trunc_normal .02 x init_scale .001
        nn.init.zeros_(self.head.bias)

    def forward(self, images):
        tokens = self.encoder.forward_features(images)[:, self.encoder.num_prefix_tokens:]  # [B, N, D]
        return self.head(self.fc_norm(tokens.mean(1)))  # [B, classes]


def train_classifier(encoder, train_set, cfg, size: int, steps: int, warmup: int, seed: int,
                     progress=None, task: str = "fine-tuning",
                     device: torch.device = torch.device("cpu"),
                     amp: str = "none", crop_pct: float = 1.0,
                     workers: int = 0) -> tuple[Classifier, list[float]]:
    """Train `encoder` with a new head on (image, label) pairs by the recipe `cfg` (a
    FinetuneConfig); returns the classifier in eval mode and the loss per step."""
    classes = getattr(train_set, "num_classes", None) or len(getattr(train_set, "classes", []))
    if not classes:
        raise DataError("fine-tuning needs labelled data: point eval_data at class sub-folders.")
    torch.manual_seed(seed)
    random.seed(seed)  # timm's RandAugment and random erasing draw from Python's RNG
    encoder = per_block_rel_pos_bias(encoder)
    set_drop_path(encoder, cfg.drop_path)
    model = Classifier(encoder, classes).to(device)
    groups = param_groups(model.encoder, cfg.weight_decay, cfg.layer_decay,
                          head=nn.ModuleList([model.fc_norm, model.head]))
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        from timm.data import Mixup

        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix,
                      label_smoothing=cfg.label_smoothing, num_classes=classes)
    g = torch.Generator().manual_seed(seed)
    view = FinetuneAugmentation(size) if cfg.augment else CentreView(size, crop_pct)

    def epoch_batches(epoch):
        order = torch.randperm(len(train_set), generator=g)
        return labelled_batches(train_set, cfg.batch_size, view, order, drop_last=True,
                                workers=workers, pin_memory=device.type == "cuda",
                                seed=seed * 1_000 + epoch)

    def loss_fn(m, batch):
        x, y = batch
        if mixup is not None:
            x, soft = mixup(x, y)
            return SoftTargetCrossEntropy()(m(x), soft)
        return F.cross_entropy(m(x), y, label_smoothing=cfg.label_smoothing)

    losses = train(model, groups, endless(epoch_batches), loss_fn, steps, cfg.lr, warmup,
                   "cosine", progress=progress, task=task, amp=amp, device_batch=cfg.device_batch)
    return model, losses


def predict(model: Classifier, dataset, size: int, amp: str = "none", crop_pct: float = 1.0,
            workers: int = 0, among: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The predicted classes [N] of a dataset's images (centre views) and their labels [N].
    `among`: the classifier's outputs to choose from, the dataset's label i being among[i]
    (ImageNet-R's 200 of ImageNet's 1000 classes); predictions and labels are then the
    dataset's own indices."""
    predicted, labels = [], []
    device = next(model.parameters()).device
    with torch.no_grad(), autocast(device, amp):
        for x, y in labelled_batches(dataset, 256, CentreView(size, crop_pct), workers=workers,
                                     pin_memory=device.type == "cuda"):
            logits = model(to_device(x, device)).float().cpu()
            predicted.append((logits if among is None else logits[:, among]).argmax(1))
            labels.append(y)
    return torch.cat(predicted), torch.cat(labels)


def among_train_classes(train_classes: list[str], extra_classes: list[str], name: str) -> torch.Tensor | None:
    """The fine-tuned classifier's output index of each class of an extra set (by class name);
    None when the extra set has no class names or the same list."""
    if not extra_classes or list(extra_classes) == list(train_classes):
        return None
    unknown = [c for c in extra_classes if c not in train_classes]
    if unknown:
        raise DataError(f"finetune.extra_val.{name} holds classes the fine-tuning data lacks "
                        f"({', '.join(unknown[:5])}); its class folders must be named as the train split's.")
    return torch.tensor([list(train_classes).index(c) for c in extra_classes])


def extra_top1(model: Classifier, config, size: int, train_set) -> tuple[dict, dict]:
    """top1_NAME of each finetune.extra_val set, and what the card says of each."""
    metrics, cards = {}, {}
    for name, options in config.finetune.extra_val.items():
        options = dict(options)
        dataset_name = options.pop("name")  # config.check_options names it
        dataset = build_dataset(dataset_name, **options)
        extra_classes = list(getattr(dataset, "classes", None) or [])
        among = among_train_classes(list(getattr(train_set, "classes", None) or []), extra_classes, name)
        predicted, labels = predict(model, dataset, size, config.optim.amp, config.eval_data.crop_pct,
                                    config.eval_data.num_workers, among)
        metrics[f"top1_{name}"] = top1(predicted, labels)
        cards[name] = {"dataset": dataset_name, "options": options, "size": len(dataset),
                       "fingerprint": fingerprint(dataset, dataset_name, options),
                       "classes": len(extra_classes) or None,
                       "outputs": "its classes among the classifier's" if among is not None else "all"}
    return metrics, cards


def top1(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return (predicted == labels).sum().item() / len(labels) * 100


def finetune_steps(cfg, train_size: int) -> int:
    """Optimizer steps: `steps`, or `epochs` of whole batches."""
    return in_steps(cfg.steps, cfg.epochs, train_size, cfg.batch_size)


def finetune(encoder, config, source: str, progress=None, preset: str | None = None) -> dict:
    cfg = config.finetune
    train_set, val_set = eval_splits(config)
    size = input_size(encoder, config)
    steps = finetune_steps(cfg, len(train_set))
    warmup = in_steps(cfg.warmup_steps, cfg.warmup_epochs, len(train_set), cfg.batch_size)
    model, losses = train_classifier(encoder, train_set, cfg, size, steps, warmup, config.run.seed,
                                     progress, device=resolve_device(config.run.device),
                                     amp=config.optim.amp, crop_pct=config.eval_data.crop_pct,
                                     workers=config.eval_data.num_workers)
    classes = model.head.out_features
    card = {"protocol": "BEiT fine-tuning", **dataclasses.asdict(cfg), "steps_run": steps,
            "warmup_steps_run": warmup, "model": source, **class_card(train_set), "classes": classes,
            "features": "average-pooled last-block patch tokens (final norm dropped), LayerNorm, linear",
            "views": (f"training: {'random resized crop, flip, RandAugment m9, random erasing 0.25' if cfg.augment else 'as validation'}; "
                      f"validation: shorter side to {size}/{config.eval_data.crop_pct:g}, centre {size}-px crop"),
            "train": {"options": config.eval_data.train, "size": len(train_set),
                      "fingerprint": fingerprint(train_set, config.eval_data.name, config.eval_data.train)},
            "val": {"options": config.eval_data.val, "size": len(val_set),
                    "fingerprint": fingerprint(val_set, config.eval_data.name, config.eval_data.val)},
            "chance": 100 / classes, "final_train_loss": losses[-1], "seed": config.run.seed,
            "reference": REFERENCES.get(preset)}
    predicted, labels = predict(model, val_set, size, config.optim.amp, config.eval_data.crop_pct,
                                config.eval_data.num_workers)
    extra, card["extra_val"] = extra_top1(model, config, size, train_set)
    return {"top1": top1(predicted, labels), **extra, "card": card, "per_image": (predicted, labels)}
