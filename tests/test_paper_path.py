"""CI's dress rehearsal of the `paper` preset: docs/scale-out.md's torchrun commands, run as
written with 2 gloo processes on CPU (slow: run by CI)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.test_ade20k import make_ade
from tests.conftest import last_logged_step, wait_until
from tests.test_distributed import kill_torchrun

DOC = Path(__file__).resolve().parents[1] / "docs" / "scale-out.md"


def documented_torchrun_commands() -> list[str]:
    """The torchrun lines of docs/scale-out.md's first code block, continuations joined."""
    block = DOC.read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [" ".join(line.split()) for line in lines if line.startswith("torchrun")]


def as_here(command: str, tmp_path: Path) -> list[str]:
    """A documented command with this test's folders and 2 processes; python -m for torchrun."""
    command = (command.replace("--nproc-per-node 8", "--nproc-per-node 2")
               .replace("/data/imagenet", str(tmp_path / "imagenet"))
               .replace("/data/ADEChallengeData2016", str(tmp_path / "ADEChallengeData2016"))
               .replace("runs/mvp-300ep", str(tmp_path / "run")))
    return [sys.executable, "-m", "torch.distributed.run", *command.split()[1:]]


def write_jpegs(folder: Path, classes, per_class: int, seed: int):
    """An ImageNet-format folder of non-square JPEGs."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (folder / c).mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(180, 300, 2)
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / c / f"{c}_{i}.JPEG", quality=90)


@pytest.mark.slow
def test_documented_torchrun_commands_pretrain_resume_and_evaluate(tmp_path):
    import open_clip
    import torch

    first, resume = documented_torchrun_commands()
    assert "--resume" in resume and "--preset paper" in first
    weights = tmp_path / "clip_vitb16.pt"
    torch.save(open_clip.create_model("ViT-B-16").state_dict(), weights)
    write_jpegs(tmp_path / "imagenet" / "train", ("n01", "n02"), per_class=4, seed=0)
    write_jpegs(tmp_path / "imagenet" / "val", ("n01", "n02"), per_class=2, seed=1)
    ade = tmp_path / "ADEChallengeData2016"
    make_ade(ade, "training", n=2, size=(600, 520))
    make_ade(ade, "validation", n=1, size=(640, 480))  # rescaled to 683x512: two windows
    reduced = {  # sizes only: the recipe's settings stand
        "target": {"model": "ViT-B-16", "weights": str(weights), "layer": -1, "project": True},
        "data": {"num_workers": 0},
        "optim": {"effective_batch": 2, "batch_size": 1, "steps": 4, "epochs": None,
                  "warmup_steps": 1, "warmup_epochs": None},
        "run": {"checkpoint_every": 2, "log_every": 1},
        "eval_data": {"num_workers": 1},
        "linear": {"batch_size": 4, "epochs": 2, "warmup_epochs": 1},
        "finetune": {"steps": 2, "epochs": None, "batch_size": 4, "warmup_steps": 1,
                     "warmup_epochs": None},
        "segmentation": {"steps": 2, "batch_size": 2, "warmup_steps": 1, "channels": 32,
                         "aux_channels": 16},
    }
    (tmp_path / "reduced.yaml").write_text(yaml.safe_dump(reduced))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"

    proc = subprocess.Popen([*as_here(first, tmp_path), "--config", str(tmp_path / "reduced.yaml")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    wait_until(lambda: last_logged_step(out) >= 2, proc, timeout=900, poll=0.05)
    if proc.poll() is not None:
        pytest.fail(f"the first command ended before its first checkpoint: {proc.stderr.read()[-3000:]}")
    kill_torchrun(proc)
    assert 2 <= last_logged_step(out) < 4, "the run was not killed mid-training"

    resumed = subprocess.run(as_here(resume, tmp_path), env=env, capture_output=True, text=True,
                             timeout=2400)
    errors = [line for line in resumed.stderr.splitlines() if "error:" in line]
    assert resumed.returncode == 0, (errors, resumed.stderr[-3000:])
    assert "effective batch 2 = 1 per process x 2 process(es) x 1 accumulation" in resumed.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["pretrain"]["steps"] == 4 and results["pretrain"]["world_size"] == 2
    assert results["config"]["student"]["model"] == "beit_base_patch16_224"
    evals = results["evals"]
    assert set(evals) == {"linear_probe", "knn", "finetune", "segmentation"}
    assert evals["linear_probe"]["card"]["protocol"] == "mae"
    finetune = evals["finetune"]["card"]
    assert (finetune["mixup"], finetune["cutmix"], finetune["augment"]) == (0.8, 1.0, True)
    assert "RandAugment" in finetune["views"] and "224/0.875" in finetune["views"]
    seg = evals["segmentation"]["card"]
    assert (seg["crop"], seg["stride"], seg["dataset"]) == (512, 341, "ade20k")
    assert seg["classes"] == 150 and seg["encoder_input"] == 512
    assert seg["val"]["size"] == 1 and "sliding window 512/341" in seg["inference"]
    for name in ("linear_probe", "knn", "finetune", "segmentation"):  # each result with its card
        assert re.search(r"step 4\b", json.dumps(evals[name]["card"])), name
