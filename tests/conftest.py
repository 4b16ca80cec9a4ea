import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Teachers and downloads go to a per-test cache, never the user's."""
    monkeypatch.setenv("MIMBENCH_HOME", str(tmp_path / "mimbench-home"))


def run_cli(*args, cwd=None, env=None, timeout=300, one_log=False):
    """Run `python -m mimbench ARGS` as a user would; returns the CompletedProcess. one_log: as
    `> log.txt 2>&1` (a SLURM log): stderr joins stdout in one pipe."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "mimbench", *map(str, args)], cwd=cwd,
                          env=full_env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT if one_log else subprocess.PIPE,
                          text=True, timeout=timeout)


@pytest.fixture
def cli(tmp_path):
    def call(*args, **kwargs):
        kwargs.setdefault("cwd", tmp_path)
        return run_cli(*args, **kwargs)
    return call


def write_images(folder: Path, classes=("a", "b"), per_class=4, size=40, seed=0):
    """An ImageNet-style folder of small random PNGs."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / c / f"{i}.png")
    return folder


@pytest.fixture
def image_folder(tmp_path):
    return write_images(tmp_path / "images")
