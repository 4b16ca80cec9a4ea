"""The wheel a plain `pip install .` builds holds every module of the checkout."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = {"mimbench": "mimbench", "targets": "mimbench/targets", "evals": "mimbench/evals",
          "suites": "mimbench/suites"}


def test_wheel_contains_every_module(tmp_path):
    source = tmp_path / "src"  # a clean copy: no stale build/ folder can fill the gaps
    for name in ("pyproject.toml", "README.md"):
        source.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for folder in LAYOUT:
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(source)], check=True, capture_output=True)
    names = set(zipfile.ZipFile(next(tmp_path.glob("mimbench-*.whl"))).namelist())
    expected = {f"{LAYOUT[folder]}/{path.relative_to(ROOT / folder).as_posix()}"
                for folder in LAYOUT for path in (ROOT / folder).rglob("*.py")}
    assert expected <= names, sorted(expected - names)
    assert not any(n.startswith(("targets/", "evals/", "tests/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "mimbench = mimbench.cli:main" in zipfile.ZipFile(next(tmp_path.glob("*.whl"))).read(entry_points).decode()
