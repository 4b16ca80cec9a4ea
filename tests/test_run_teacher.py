"""A run's student as a frozen feature teacher (`--target run`, dBOT's bootstrapping)."""

import json

import pytest
import torch

from mimbench.errors import ConfigError, MimbenchError
from mimbench.student import trained_encoder
from mimbench.targets import build_target
from tests.conftest import run_cli

SMOKE = ["--preset", "smoke", "--set", "run.evals=[linear]"]
BEIT = ["--set", "student.model=beit_base_patch16_224", "--set", "student.layer_scale=0.1",
        "--set", "student.pos_embed=learn", "--set",
        "student.extra={use_abs_pos_emb: false, use_rel_pos_bias: false, use_shared_rel_pos_bias: true}"]


@pytest.fixture(scope="module")
def stage_0(tmp_path_factory):
    """A finished smoke pre-training (pixels target) to use as a teacher."""
    out = tmp_path_factory.mktemp("stage0") / "run"
    result = run_cli("pretrain", "--preset", "smoke", "--target", "pixels", "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def block_output(encoder, images, block):
    """Block `block`'s patch tokens in the encoder's own forward pass, caught by a hook."""
    seen = []
    hook = encoder.blocks[block].register_forward_hook(lambda m, args, out: seen.append(out))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        encoder.forward_features((images - mean) / std)
    hook.remove()
    return seen[0][:, encoder.num_prefix_tokens:]  # [B, N, D]


@pytest.mark.parametrize("student", ["vit", "beit"])
def test_the_target_is_the_saved_students_block_output(tmp_path, stage_0, student):
    run = stage_0
    if student == "beit":
        run = tmp_path / "beit"
        result = run_cli("pretrain", "--preset", "smoke", "--target", "pixels", *BEIT, "--out", run)
        assert result.returncode == 0, result.stderr
    provider = build_target("run", path=str(run), layer=1)
    encoder, _ = trained_encoder(run)
    images = torch.rand(3, 3, 32, 32)
    expected = block_output(encoder, images, 1)
    assert provider.spec.grid == (4, 4) and provider.spec.dim == encoder.embed_dim
    assert torch.allclose(provider(images), expected, atol=1e-5)
    torch.manual_seed(1)
    untrained = type(encoder)(**{"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2})
    assert not torch.allclose(block_output(untrained, images, 1), expected, atol=1e-3)  # the weights are the run's


def test_a_run_pretrains_on_a_run_and_on_an_exported_folder(tmp_path, stage_0):
    """Stage 1 regresses stage 0's student, stage 2 stage 1's; an exported folder works alike."""
    stage_1 = tmp_path / "stage1"
    result = run_cli("run", *SMOKE, "--target", "run", "--set", f"target.path={stage_0}", "--out", stage_1)
    assert result.returncode == 0, result.stderr
    saved = json.loads((stage_1 / "results.json").read_text())
    assert saved["target"]["name"] == "run" and saved["config"]["target"]["path"] == str(stage_0)
    assert "linear_probe" in saved["evals"]
    stage_2 = run_cli("pretrain", "--preset", "smoke", "--target", "run", "--set", f"target.path={stage_1}",
                      "--set", "target.layer=0", "--out", tmp_path / "stage2")
    assert stage_2.returncode == 0, stage_2.stderr
    exported = tmp_path / "exported"
    assert run_cli("export", stage_0, "--out", exported).returncode == 0
    result = run_cli("pretrain", "--preset", "smoke", "--target", "run", "--set", f"target.path={exported}",
                     "--out", tmp_path / "from_export")
    assert result.returncode == 0, result.stderr


def test_refusals_name_the_fix(stage_0, tmp_path):
    with pytest.raises(ConfigError, match="needs the teacher: --set target.path=RUN_DIR"):
        build_target("run")
    with pytest.raises(ConfigError, match="'timm:random' is not a run directory"):
        build_target("run", path="timm:random")
    with pytest.raises(ConfigError, match="target.layer=5 is out of range"):
        build_target("run", path=str(stage_0), layer=5)
    with pytest.raises(MimbenchError, match="stopped at step 3 of 6.*--set target.partial=true"):
        build_target("run", path=str(stage_0 / "checkpoint.prev.pt"))
    assert build_target("run", path=str(stage_0 / "checkpoint.prev.pt"), partial=True).spec.dim == 32


BOOTSTRAP = """
preset: smoke
variants:
  b0: {target: run, set: {target.path: random, target.seed: "{seed}"}}
  b1: {target: run, set: {target.path: "{run:b0}"}}
targets: [b0, b1]
seeds: [0, 1]
set: {optim.steps: 2}
evals: [linear]
"""


def test_a_suite_bootstraps_stage_by_stage_even_with_two_jobs(tmp_path):
    """Stage 1 of each seed loads that seed's finished stage-0 student; with --jobs 2 the
    seed-ordered queue (b0-s0, b1-s0, ...) holds b1-s0 back until b0-s0 has finished."""
    path, out = tmp_path / "bootstrap.yaml", tmp_path / "out"
    path.write_text(BOOTSTRAP)
    result = run_cli("suite", "run", path, "--out", out, "--jobs", "2")
    assert result.returncode == 0, result.stderr
    for seed in (0, 1):
        stage_1 = json.loads((out / "runs" / f"b1-s{seed}" / "results.json").read_text())
        assert stage_1["config"]["target"]["path"] == str(out / "runs" / f"b0-s{seed}")
        stage_0 = json.loads((out / "runs" / f"b0-s{seed}" / "results.json").read_text())
        assert (stage_0["config"]["target"]["path"], stage_0["config"]["target"]["seed"]) == ("random", seed)
        assert "linear_probe" in stage_1["evals"]
    again = run_cli("suite", "run", path, "--out", out)  # the folders' paths: the same configs, reused
    assert again.returncode == 0 and "running it afresh" not in again.stderr, again.stderr


def test_a_row_can_load_only_a_pretraining_row_listed_before_it(tmp_path):
    from mimbench.suites import schema

    path = tmp_path / "bootstrap.yaml"
    path.write_text(BOOTSTRAP.replace("targets: [b0, b1]", "targets: [b1, b0]"))
    with pytest.raises(ConfigError, match="row 'b1' loads '{run:b0}', but 'b0' is not a pre-training row listed before it"):
        schema.load(str(path))


def test_cluster_waves_put_each_run_after_the_runs_it_loads():
    from mimbench.suites import runner, schema

    def spec(name, after=()):
        return schema.RunSpec(name, "x", 0, {}, None, (), after)

    runs = [spec("a"), spec("b", ("a",)), spec("c", ("b",)), spec("d"), spec("e", ("z",))]
    assert runner.waves(runs, [0, 1, 2, 3, 4]) == [[0, 3, 4], [1], [2]]  # z finished before: no wait
    assert runner.waves(runs, [1, 2]) == [[1], [2]]
