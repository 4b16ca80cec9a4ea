"""One world image per pre-trained target: the image, its class mask, the target's answer
(a d-VAE token map, or the first 3 principal components of feature targets) and the
student's prediction on the masked patches (the others grey)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mimbench import checkpoint
from mimbench import config as cfg
from mimbench.data import build_dataset
from mimbench.data.views import MIMViews, sample_generator, student_input, teacher_input
from mimbench.masking import build_masking
from mimbench.student import build_student
from mimbench.targets.source import build_target_for


def to_rgb(values: torch.Tensor, tokens: bool, frame: tuple | None = None):
    """[N, D] features or [N] token ids -> [N, 3] colours in [0, 1], and the frame (mean, PCA
    basis, range) to colour other values alike."""
    if tokens:
        palette = torch.rand(int(values.max()) + 1, 3, generator=torch.Generator().manual_seed(0))
        return palette[values], None
    if frame is None:
        mean = values.mean(0)
        basis = torch.linalg.svd(values - mean, full_matrices=False).Vh[:3].T  # [D, 3]
        projected = (values - mean) @ basis
        frame = (mean, basis, projected.min(0).values, projected.max(0).values)
    mean, basis, low, high = frame
    return (((values - mean) @ basis - low) / (high - low).clamp_min(1e-6)).clamp(0, 1), frame


@torch.no_grad()
def example(folder: Path, index: int = 0) -> dict | None:
    state = checkpoint.load_latest(folder)
    if state is None:
        return None  # the run's checkpoint was deleted: no student to draw
    config = cfg.from_dict(state["config"])
    provider = build_target_for(config)
    spec = provider.spec
    student = build_student(config.student, spec)
    student.load_state_dict(state["student"])
    student.eval()
    data = build_dataset(config.eval_data.name, **{**config.eval_data.val, "labels": "mask"})
    image, label = data[index]
    views = MIMViews(config.student.img_size, spec.input_size, spec.interpolation,
                     build_masking(config.mask, config.student))
    v = views.collate([views(image, sample_generator(config.run.seed, 0, index))])  # a batch of 1
    target = provider(teacher_input(v["teacher"]))[0].clone()  # [N, D] or [N]
    pred = student(student_input(v["student"]), v["mask"])[0]  # [N, dim]
    tokens = spec.kind == "tokens"
    target_rgb, frame = to_rgb(target if tokens else target.float(), tokens)
    if tokens:  # one seed: an id has the same colour in both panels
        pred_rgb, _ = to_rgb(pred.argmax(-1), tokens)
    else:  # standardised like the targets the student was trained on
        if config.target.standardize:
            pred = pred * target.float().std(0) + target.float().mean(0)
        pred_rgb, _ = to_rgb(pred, tokens, frame)
    pred_rgb[~v["mask"][0]] = 0.5
    h, w = spec.grid
    return {"image": np.asarray(image), "label": np.asarray(label),
            "target": target_rgb.reshape(h, w, 3).numpy(), "prediction": pred_rgb.reshape(h, w, 3).numpy(),
            "kind": "token ids" if tokens else "features, PCA to RGB"}


def draw(examples: dict[str, dict]):
    """The examples as a figure, a row per target: image, class mask, target, prediction."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(examples), 4, figsize=(8, 2.2 * len(examples)), squeeze=False)
    for row, (name, ex) in zip(axes, examples.items()):
        panels = [("image", ex["image"], None), ("class mask", ex["label"], "tab10"),
                  (f"{name} target ({ex['kind']})", ex["target"], None),
                  ("student on masked patches", ex["prediction"], None)]
        for ax, (title, picture, cmap) in zip(row, panels):
            limits = {"vmin": 0, "vmax": 9} if cmap else {}
            ax.imshow(picture, cmap=cmap, interpolation="nearest", **limits)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    return fig
