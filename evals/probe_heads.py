"""Linear classifiers on cached features: CLIP's L-BFGS logistic regression with its
regularisation chosen on a held-out part of train, and MAE's BatchNorm + linear head trained
with LARS or SGD. Each: (train features and labels, val features and labels) -> top-1 %."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from mimbench.evals.lars import LARS
from mimbench.fitting import fit
from mimbench.lr_schedule import lr_at
from mimbench.optim import in_steps


def fit_logistic(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float, max_iter: int):
    """Multinomial logistic regression by L-BFGS: minimise CE + l2 * ||W||^2. Returns (W, b)."""
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def choose_and_fit(train_x, train_y, classes, cfg, seed):
    """CLIP's protocol: the L2 strength that does best on a held-out part of train, then a
    refit on all of it. Returns (W, b, details)."""
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))
    cut = int(len(order) * (1 - cfg.holdout))
    fit, hold = order[:cut], order[cut:]
    scores = {}
    for l2 in cfg.regularisation:
        w, b = fit_logistic(train_x[fit], train_y[fit], classes, l2, cfg.max_iter)
        scores[l2] = ((train_x[hold] @ w + b).argmax(1) == train_y[hold]).float().mean().item()
    best = max(scores, key=lambda l2: (scores[l2], l2))  # ties: the stronger regularisation
    w, b = fit_logistic(train_x, train_y, classes, best, cfg.max_iter)
    return w, b, {"chosen_regularisation": best, "holdout_accuracy": scores}


def lbfgs_probe(train_x, train_y, val_x, classes, cfg, seed):
    """The val images' predicted classes [V] and what was chosen."""
    w, b, details = choose_and_fit(train_x, train_y, classes, cfg, seed)
    return (val_x @ w + b).argmax(1), details


def shuffled_batches(size: int, batch_size: int, epochs: int, seed: int):
    """Index batches [b] over `epochs` passes, each a new permutation of range(size) (from a
    generator seeded by `seed`) cut into in_steps(None, 1, ...) whole batches."""
    order = torch.Generator().manual_seed(seed)
    per_epoch = in_steps(None, 1, size, batch_size)
    for _ in range(epochs):
        perm = torch.randperm(size, generator=order)
        for i in range(per_epoch):
            yield perm[i * batch_size:(i + 1) * batch_size]


def fit_head(head: torch.nn.Module, optimizer, train_x, train_y, cfg, peak: float, seed: int,
             progress=None, task: str = "training") -> list[float]:
    """Cross-entropy of `head` on (train_x, train_y) for cfg.epochs shuffled passes of
    cfg.batch_size, the rate warmed up over cfg.warmup_epochs to `peak`, then cosine (lr_at),
    through fitting.fit; returns the loss per step, the head left in eval mode."""
    total, warmup = (in_steps(None, e, len(train_x), cfg.batch_size) for e in (cfg.epochs, cfg.warmup_epochs))
    batches = shuffled_batches(len(train_x), cfg.batch_size, cfg.epochs, seed)

    def loss_of(step: int) -> float:
        batch = next(batches)
        loss = F.cross_entropy(head(train_x[batch]), train_y[batch])
        loss.backward()
        return loss.item()

    head.train()
    losses = fit(optimizer, loss_of, total, partial(lr_at, total=total, warmup=warmup, peak=peak), progress, task)
    head.eval()
    return losses


def mae_probe(train_x, train_y, val_x, classes, cfg, seed):
    """MAE's protocol on cached features: BatchNorm without affine, a linear layer, LARS (or
    SGD) with momentum 0.9, lr = base_lr * batch / 256, linear warmup then cosine, per step."""
    torch.manual_seed(seed)
    head = torch.nn.Sequential(torch.nn.BatchNorm1d(train_x.shape[1], affine=False, eps=1e-6),
                               torch.nn.Linear(train_x.shape[1], classes))
    torch.nn.init.trunc_normal_(head[1].weight, std=0.01)
    torch.nn.init.zeros_(head[1].bias)
    lr = cfg.base_lr * cfg.batch_size / 256
    if cfg.optimizer == "lars":
        opt = LARS(head.parameters(), lr=lr, weight_decay=cfg.weight_decay, momentum=0.9)
    else:
        opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=cfg.weight_decay)
    losses = fit_head(head, opt, train_x, train_y, cfg, lr, seed)
    with torch.no_grad():
        return head(val_x).argmax(1), {"lr": lr, "steps": len(losses)}
