"""The attentive probe (CAE, AIM, V-JEPA): a learned query attends once over a frozen block's
patch tokens, then LayerNorm and a linear classifier, trained with AdamW. Where the linear
probe averages the tokens first, this one learns which tokens to read."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from mimbench.errors import ConfigError
from mimbench.evals.data import eval_splits, labelled_batches
from mimbench.evals.features import BATCH, FrozenModel
from mimbench.evals.probe_heads import fit_head
from mimbench.memory import refuse_over_half


class AttentivePooler(nn.Module):
    """[B, N, D] tokens -> [B, classes] logits: one learned query, multi-head cross-attention,
    LayerNorm, linear."""

    def __init__(self, dim: int, heads: int, classes: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.attend = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled, _ = self.attend(self.query.expand(len(tokens), -1, -1), tokens, tokens, need_weights=False)
        return self.head(self.norm(pooled[:, 0]))  # [B, classes]


def tokens_of(model: FrozenModel, dataset, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image's patch tokens [M, N, D] and labels [M], in the dataset's order, held in
    memory: refused after the first batch when they would fill more than half of it (ImageNet's
    1.28M x 196 x 768 floats would take 718 GiB)."""
    tokens, labels = [], []
    with torch.no_grad():
        for views, y in labelled_batches(dataset, BATCH, model.view, workers=workers):
            tokens.append(model.tokens(views))
            labels.append(y)
            if len(tokens) == 1:
                refuse_over_half(len(dataset) * tokens[0][0].numel() * 4, "the attentive probe's tokens",
                                 "evaluate on a subset of the images (eval_data options) or use the linear probe")
    return torch.cat(tokens), torch.cat(labels)


def attentive_probe(model: FrozenModel, config, progress=None, preset: str | None = None) -> dict:
    """Top-1 of the attentive probe on frozen patch tokens; the result with its protocol card."""
    cfg = config.attentive
    train_set, val_set = eval_splits(config)
    train_x, train_y = tokens_of(model, train_set, config.eval_data.num_workers)
    val_x, val_y = tokens_of(model, val_set, config.eval_data.num_workers)
    dim, classes = train_x.shape[-1], int(max(train_y.max(), val_y.max())) + 1
    if dim % cfg.heads:
        raise ConfigError(f"attentive.heads={cfg.heads} does not divide the features' width {dim}; "
                          f"pick a divisor of {dim}.")
    torch.manual_seed(config.run.seed)
    probe = AttentivePooler(dim, cfg.heads, classes)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses = fit_head(probe, optimizer, train_x, train_y, cfg, cfg.lr, config.run.seed, progress, "attentive probe")
    with torch.no_grad():
        predicted = torch.cat([probe(val_x[i:i + BATCH]).argmax(1) for i in range(0, len(val_x), BATCH)])
    card = {"protocol": "attentive probe (one learned query, cross-attention, LayerNorm, linear; AdamW)",
            **dataclasses.asdict(cfg), "steps": len(losses), "model": model.source,
            "features": f"the patch tokens behind: {model.features}",
            "train": {"size": len(train_x)}, "val": {"size": len(val_x)}, "classes": classes,
            "chance": 100 / classes, "final_train_loss": losses[-1], "seed": config.run.seed}
    return {"top1": (predicted == val_y).float().mean().item() * 100, "card": card,
            "per_image": (predicted, val_y)}
