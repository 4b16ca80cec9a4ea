"""README's worked example (your own data, Fashion-MNIST as an ImageFolder), its commands run
as written but at smoke size: 20 images a class, the smoke preset."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
IDX = Path("/usr/share/datasets/fashion-mnist")


def worked_example() -> list[list[str]]:
    """The commands of README's worked example, after its marker comment, install step aside."""
    block = (ROOT / "README.md").read_text().split("<!-- worked-example:", 1)[1]
    block = block.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line.split("  #")[0]) for line in block.splitlines() if line.strip()]
    return [c for c in commands if c[0] != "sudo"]


@pytest.mark.skipif(not (IDX / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_readme_worked_example_on_fashion_mnist(tmp_path):
    convert, run, evaluate = worked_example()
    assert convert[:2] == ["python", "examples/fashion_mnist_folder.py"]
    convert = [sys.executable, str(ROOT / convert[1]), *convert[2:]]
    convert[convert.index("--per-class") + 1] = "20"
    made = subprocess.run(convert, cwd=tmp_path, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in (tmp_path / "data/fashion-mnist/train").iterdir())[:2] == ["ankle-boot", "bag"]

    assert run[:2] == ["mimbench", "run"] and evaluate[:2] == ["mimbench", "eval"]
    trained = run_cli(*run[1:], "--preset", "smoke", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    results = json.loads((tmp_path / "runs/fmnist-pixels/results.json").read_text())
    assert set(results["evals"]) == {"linear_probe", "knn", "finetune"}
    card = results["evals"]["linear_probe"]["card"]
    assert card["classes"] == 10 and card["class_names"][0] == "ankle-boot"
    assert card["train"]["size"] == 200 and card["val"]["size"] == 200

    evaluated = run_cli(*evaluate[1:], cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    [saved] = (tmp_path / "runs/fmnist-pixels/evals").glob("knn-*/results.json")
    knn = json.loads(saved.read_text())["evals"]
    assert set(knn) == {"knn"} and knn["knn"]["card"]["k"] == 10
