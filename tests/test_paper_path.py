"""The `paper` preset's code paths end to end on CPU at reduced size (slow: run by CI)."""

import json

import pytest
import yaml

from tests.conftest import run_cli, write_images
from tests.test_ade20k import make_ade


@pytest.mark.slow
def test_paper_preset_runs_pretraining_and_all_three_evaluations(tmp_path):
    """BEiT ViT-B/16 student at 224 px, a random-weight open_clip ViT-B/16 teacher read from a
    local file, two pre-training steps on an image folder; then MAE's linear probe, fine-tuning
    with mixup and cutmix, and UperNet on an ADE20K-format folder at crop 512 / stride 341, each
    for a couple of steps. Only sizes are reduced: steps, batches, the UperNet width."""
    import open_clip
    import torch

    weights = tmp_path / "clip_vitb16.pt"
    torch.save(open_clip.create_model("ViT-B-16").state_dict(), weights)
    write_images(tmp_path / "train", classes=("a", "b"), per_class=4, size=64)
    write_images(tmp_path / "val", classes=("a", "b"), per_class=2, size=64, seed=1)
    ade = tmp_path / "ADEChallengeData2016"
    make_ade(ade, "training", n=2, size=(600, 520))
    make_ade(ade, "validation", n=1, size=(640, 480))  # rescaled to 683x512: two windows
    config = {
        "target": {"name": "clip", "model": "ViT-B-16", "weights": str(weights), "layer": -1,
                   "project": True},
        "data": {"root": str(tmp_path / "train"), "num_workers": 0},
        "optim": {"effective_batch": 2, "batch_size": 2, "steps": 2, "epochs": None, "warmup_steps": 1,
                  "warmup_epochs": None, "amp": "none"},
        "run": {"teacher_amp": "none", "checkpoint_every": 2, "log_every": 1},
        "eval_data": {"train": {"root": str(tmp_path / "train")}, "val": {"root": str(tmp_path / "val")}},
        "linear": {"batch_size": 4, "epochs": 2, "warmup_epochs": 1},
        "finetune": {"steps": 2, "epochs": None, "batch_size": 4, "warmup_steps": 1, "warmup_epochs": None},
        "segmentation": {"steps": 2, "batch_size": 2, "warmup_steps": 1, "channels": 32,
                         "root": str(ade)},
    }
    (tmp_path / "paper_small.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    result = run_cli("run", "--preset", "paper", "--config", tmp_path / "paper_small.yaml",
                     "--out", out, timeout=1800)
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["pretrain"]["steps"] == 2 and results["config"]["student"]["model"] == "beit_base_patch16_224"
    evals = results["evals"]
    assert set(evals) == {"linear_probe", "knn", "finetune", "segmentation"}
    assert evals["linear_probe"]["card"]["protocol"] == "mae"
    assert (evals["finetune"]["card"]["mixup"], evals["finetune"]["card"]["cutmix"]) == (0.8, 1.0)
    seg = evals["segmentation"]
    assert (seg["card"]["crop"], seg["card"]["stride"], seg["card"]["dataset"]) == (512, 341, "ade20k")
    assert seg["card"]["classes"] == 150 and len(seg["per_class_iou"]) == 150
    assert seg["card"]["encoder_input"] == 512
    assert seg["card"]["val"]["size"] == 1 and "sliding window 512/341" in seg["card"]["inference"]
