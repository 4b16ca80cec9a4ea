"""The plugin API: registration, the contract checker, and the example plugin installed for real."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mimbench.errors import ConfigError
from mimbench.registry import Registry
from mimbench.targets import TARGETS, TargetSpec, build_target, register_target
from mimbench.testing import TargetContractError, check_target_provider
from tests.conftest import run_cli
from tests.test_vqkd import SMALL as VQKD_SMALL, released_layout

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "plugins" / "mimbench-hog"


@pytest.fixture(scope="module")
def small_options(tmp_path_factory):
    """Options that build each built-in target small and offline."""
    import dall_e
    import open_clip

    folder = tmp_path_factory.mktemp("teachers")
    cfg = {"embed_dim": 32, "vision_cfg": {"layers": [1, 1, 1, 1], "width": 16, "head_width": 16,
                                           "image_size": 32},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    torch.save(open_clip.CLIP(**cfg).state_dict(), folder / "open_clip_pytorch_model.bin")
    torch.save(dall_e.Encoder(n_hid=64, vocab_size=512), folder / "encoder.pkl")
    torch.save({"model": released_layout(VQKD_SMALL)}, folder / "vqkd.pth")
    return {
        "clip": {"model": f"local-dir:{folder}", "weights": None, "layer": 2},
        "dvae": {"weights": str(folder / "encoder.pkl"), "grid": (4, 4)},
        "pixels": {"img_size": 32, "patch_size": 8},
        "timm": {"model": "vit_tiny_patch16_224", "weights": None, "input_size": 32},
        "vqkd": {"weights": str(folder / "vqkd.pth"), "shape": VQKD_SMALL},
        "run": {"path": "random"},  # the student's architecture, from the run's context
        "multi": {"teachers": ["pixels", {"name": "timm", "model": "vit_tiny_patch16_224", "weights": None,
                                          "input_size": 32}], "grid": (4, 4), "img_size": 32, "patch_size": 8},
    }


BUILT_IN = [e.name for e in TARGETS.entries() if e.source == "built-in"]  # not a user's plugins


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_target_keeps_the_contract(name, small_options):
    from mimbench import config as cfg

    student = {"student": cfg.resolve("smoke").student} if name == "run" else {}  # what a run gives it
    provider = build_target(name, **small_options.get(name, {}), **student)
    check_target_provider(provider, name=name)


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_target_pre_trains_an_mae_student(name, small_options, tmp_path):
    """The target contract is all a style needs: each target, unchanged, under the mae student."""
    from mimbench import config as cfg
    from mimbench.engine import pretrain
    from mimbench.run_dir import RunDir

    config = cfg.resolve("smoke", target=name, overrides=("student.style=mae", "optim.steps=2"))
    config = cfg.check_options(cfg.apply(config, {"target": small_options.get(name, {})}))
    results = pretrain(config, RunDir(tmp_path / "run"))
    assert results["pretrain"]["steps"] == 2 and math.isfinite(results["pretrain"]["final_loss"])
    assert config.mask.kind == "random" and results["config"]["student"]["style"] == "mae"


class GoodTarget:
    def __init__(self, kind="features", shape_fix=None, dtype=None, grid=(2, 2)):
        self.spec = TargetSpec(kind=kind, dim=5, grid=grid, input_size=16,
                               loss="ce" if kind == "tokens" else "mse")
        self.shape_fix, self.dtype = shape_fix, dtype

    @torch.inference_mode()
    def __call__(self, view):
        b = view.shape[0]
        n = self.spec.grid[0] * self.spec.grid[1]
        out = view.mean((1, 2, 3)).view(b, 1, 1).expand(b, n, 5).clone()
        if self.spec.kind == "tokens":
            out = (out[..., 0] * 4).long()
        if self.shape_fix:
            out = self.shape_fix(out)
        return out.to(self.dtype) if self.dtype else out


def test_contract_accepts_a_good_provider():
    check_target_provider(GoodTarget(), name="good")
    check_target_provider(GoodTarget("tokens"), name="good-tokens", grid=(2, 2))


@pytest.mark.parametrize("provider, words", [
    (GoodTarget(shape_fix=lambda x: x[:, :3]), "shape [B, N, dim]"),
    (GoodTarget("tokens", dtype=torch.int32), "must be int64"),
    (GoodTarget(dtype=torch.int64), "floating point"),
    (GoodTarget(shape_fix=lambda x: x * float("nan")), "NaN"),
])
def test_contract_rejects_broken_providers_by_name(provider, words):
    with pytest.raises(TargetContractError, match=rf"target 'broken': .*{re.escape(words)}"):
        check_target_provider(provider, name="broken")


def test_contract_rejects_grid_mismatch_and_graphs():
    with pytest.raises(TargetContractError, match="target 'g': its grid 2x2 differs from the student's 4x4"):
        check_target_provider(GoodTarget(), name="g", grid=(4, 4))

    class Leaky(torch.nn.Module):
        spec = TargetSpec(kind="features", dim=3, grid=(1, 1), input_size=4)

        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3, 3)

        def forward(self, view):
            return self.proj(view.mean((2, 3))).unsqueeze(1)

    with pytest.raises(TargetContractError, match="target 'leaky': some parameters require grad"):
        check_target_provider(Leaky(), name="leaky")
    leaky = Leaky().requires_grad_(False)
    with pytest.raises(TargetContractError, match="autograd graph"):
        check_target_provider(leaky, name="leaky")


def test_decorator_registration_and_duplicate_names():
    registry = Registry("target")
    registry.register("a", source="package 'one'")(GoodTarget)
    with pytest.raises(ConfigError, match="two targets are named 'a': one from package 'one' and one from package 'two'"):
        registry.register("a", source="package 'two'")(dict)

    @register_target("in-process-example")
    class InProcess(GoodTarget):
        pass

    assert TARGETS.get("in-process-example").source == f"module '{__name__}'"
    check_target_provider(build_target("in-process-example"), name="in-process-example")


def pip_install(package, tmp_path_factory) -> dict:
    """pip-install a plugin's source folder into a folder of its own (a real wheel with its
    entry points); returns the environment that makes it importable."""
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(package)], check=True, capture_output=True)
    return {"PYTHONPATH": str(site)}


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    return pip_install(PLUGIN, tmp_path_factory)


def test_example_plugin_lists_and_runs(installed_plugin, tmp_path):
    listed = run_cli("targets", "list", "--json", env={**installed_plugin, "MIMBENCH_OFFLINE": "1"})
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["hog"]["source"] == "package 'mimbench-hog'"
    assert (rows["hog"]["kind"], rows["hog"]["options"]["bins"]) == ("features", 9)
    out = tmp_path / "run"
    result = run_cli("run", "--target", "hog", "--preset", "smoke", "--out", out, env=installed_plugin)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "results.json").read_text())["target"]["dim"] == 36
    result = run_cli("pretrain", "--target", "hog", "--preset", "smoke", "--set", "student.style=mae",
                     "--out", tmp_path / "mae", env=installed_plugin)
    assert result.returncode == 0, result.stderr


def test_listing_does_not_import_plugins(installed_plugin):
    code = ("import sys; from mimbench.targets import TARGETS; TARGETS.names(); "
            "print('mimbench_hog' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], env={**__import__('os').environ, **installed_plugin},
                            capture_output=True, text=True)
    assert result.stdout.strip() == "False"


BROKEN_PLUGIN = '''
import torch
from mimbench.targets import TargetSpec


class Broken:
    """Patch features of the wrong kind: how depends on the subclass."""

    def __init__(self, img_size: int = 32, patch_size: int = 8):
        self.side = img_size // patch_size
        self.spec = TargetSpec(kind="features", dim=4, grid=(self.side, self.side), input_size=img_size)

    @torch.inference_mode()
    def __call__(self, view):
        return self.broken(view.new_zeros(len(view), self.side * self.side, 4))


class WrongShape(Broken):
    def broken(self, out):
        return out[:, 1:]


class NaN(Broken):
    def broken(self, out):
        return out.fill_(float("nan"))


class Raises(Broken):
    def broken(self, out):
        raise KeyError("no such layer")


class Trainable(torch.nn.Module):
    """A teacher left trainable, whose output carries an autograd graph outside inference mode."""

    def __init__(self, img_size: int = 32, patch_size: int = 8):
        super().__init__()
        self.side = img_size // patch_size
        self.spec = TargetSpec(kind="features", dim=4, grid=(self.side, self.side), input_size=img_size)
        self.proj = torch.nn.Linear(3 * patch_size * patch_size, 4)
        self.patch = patch_size

    def forward(self, view):
        patches = torch.nn.functional.unfold(view, self.patch, stride=self.patch).transpose(1, 2)
        return self.proj(patches)
'''


@pytest.fixture(scope="module")
def broken_plugin(tmp_path_factory):
    """A real package whose three targets break the contract only when run on real batches."""
    source = tmp_path_factory.mktemp("broken-src")
    (source / "mimbench_broken").mkdir()
    (source / "mimbench_broken" / "__init__.py").write_text(BROKEN_PLUGIN)
    (source / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "mimbench-broken"\nversion = "0.1"\n'
        '[project.entry-points."mimbench.targets"]\nwrong-shape = "mimbench_broken:WrongShape"\n'
        'nan = "mimbench_broken:NaN"\nraises = "mimbench_broken:Raises"\n'
        'trainable = "mimbench_broken:Trainable"\n')
    return pip_install(source, tmp_path_factory)


@pytest.mark.parametrize("name, rule", [
    ("wrong-shape", "features must have shape [B, N, dim] = [8, 16, 4], not [8, 15, 4]"),
    ("nan", "its features hold NaN or inf"),
    ("raises", "failed on a batch of views: KeyError: 'no such layer'"),
    ("trainable", "has parameters that require grad; a teacher must be frozen"),
])
def test_a_broken_plugin_is_named_not_blamed_on_training(broken_plugin, tmp_path, name, rule):
    result = run_cli("run", "--target", name, "--preset", "smoke", "--out", tmp_path / "run",
                     "--set", "target.cache=false", env=broken_plugin)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert f"target '{name}' (package 'mimbench-broken')" in message and rule in message, message
    assert "lower optim.lr" not in message


def test_plugin_options_are_converted_or_refused_by_their_annotations(installed_plugin, tmp_path):
    """HOG's `bins: int`: 'abc' is one sentence naming the type, before anything is written."""
    out = tmp_path / "run"
    result = run_cli("run", "--target", "hog", "--preset", "smoke", "--set", "target.bins=abc",
                     "--out", out, env=installed_plugin)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "'target.bins' must be an integer, not 'abc'" in result.stderr.strip().splitlines()[-1]
    assert not out.exists()
