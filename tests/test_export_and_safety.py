"""Export to timm, and what a new user meets with damaged or foreign files."""

import json

import pytest
import timm
import torch

from mimbench import checkpoint
from mimbench import config as cfg
from mimbench.engine import pretrain
from mimbench.run_dir import RunDir
from mimbench.errors import MimbenchError
from mimbench.student import Student
from mimbench.targets.pixels import PixelTarget
from tests.conftest import evaluated, run_cli

SMOKE = ("optim.steps=4", "run.checkpoint_every=2")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = RunDir(tmp_path_factory.mktemp("run") / "run")
    pretrain(cfg.resolve("smoke", target="pixels", overrides=SMOKE), run)
    return run


def test_exported_student_loads_strictly_in_timm_with_equal_features(trained_run, tmp_path):
    out = tmp_path / "exported"
    result = run_cli("export", trained_run.path, "--out", out)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()  # strict by default

    state = checkpoint.load(trained_run.checkpoint)
    config = cfg.from_dict(state["config"])
    student = Student(config.student, PixelTarget(32, 8).spec)
    student.load_state_dict(state["student"])
    student.eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours = student.tokens(images)  # [3, N, D] final normed patch tokens
        theirs = model.forward_features(images)[:, model.num_prefix_tokens:]
    assert torch.allclose(ours, theirs, atol=1e-6)
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_args"]["embed_dim"] == config.student.embed_dim
    assert saved["pretrained_cfg"]["tag"] == "mimbench-pixels-step4"


def test_an_exported_mae_student_is_its_encoder_in_timm(tmp_path):
    """The mae style's decoder stays behind; the encoder loads strictly in timm and computes
    what it computed inside the student (on all patches, as evaluations run it)."""
    from mimbench.student import build_student

    run = RunDir(tmp_path / "run")
    pretrain(cfg.resolve("smoke", target="pixels", overrides=(*SMOKE, "student.style=mae")), run)
    out = tmp_path / "exported"
    assert run_cli("export", run.path, "--out", out).returncode == 0
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    state = checkpoint.load(run.checkpoint)
    student = build_student(cfg.from_dict(state["config"]).student, PixelTarget(32, 8).spec)
    student.load_state_dict(state["student"])
    assert any(k.startswith("decoder.") for k in state["student"])
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(student.encoder.eval().forward_features(images),
                              model.forward_features(images), atol=1e-6)


def test_export_writes_a_model_card_with_the_runs_results(tmp_path):
    """README.md in timm's hub layout: front matter, the target, the budget, each evaluation's
    number (as results.json has it) and protocol card, the version and the full config."""
    import yaml

    from mimbench import __version__
    from mimbench.evals import run_evals
    from mimbench.model_source import ModelSource

    run = RunDir(tmp_path / "run")
    config = cfg.resolve("smoke", target="pixels", overrides=SMOKE)
    pretrain(config, run)
    results = run_evals(["linear"], config, ModelSource.parse(run.path), run.path)
    out = tmp_path / "exported"
    assert run_cli("export", run.path, "--out", out).returncode == 0
    card = (out / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert yaml.safe_load(front)["library_name"] == "timm"
    top1 = results["evals"]["linear_probe"]["top1"]
    assert f"| linear_probe | top1 | {top1:.2f} |" in body
    assert "### Protocol card: linear_probe" in body and '"protocol": "lbfgs"' in body
    assert "`pixels` target" in body and f"mimbench {__version__}" in body
    assert f"{config.optim.steps} steps x {config.optim.batch_size} images" in body
    saved = yaml.safe_load(body.split("```yaml\n")[1].split("```")[0])
    assert saved == cfg.to_dict(config) | {"run": saved["run"]} and saved["target"]["name"] == "pixels"


def test_exported_folder_is_evaluated_like_a_checkpoint(trained_run, tmp_path):
    out = tmp_path / "exported"
    assert run_cli("export", trained_run.path, "--out", out).returncode == 0
    card = evaluated("linear", "--checkpoint", out, "--preset", "smoke", out=tmp_path / "eval",
                     name="linear_probe")["card"]
    assert card["model"] == f"exported model {out}"


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(trained_run, tmp_path, caplog):
    run = RunDir(tmp_path / "copy")
    run.path.mkdir()
    for name in (checkpoint.CHECKPOINT, checkpoint.PREVIOUS):
        (run.path / name).write_bytes((trained_run.path / name).read_bytes())
    assert checkpoint.load(run.path / checkpoint.PREVIOUS)["step"] == 2

    # flip bytes inside the tensor data: the zip still reads, only the checksum notices
    raw = bytearray((run.path / checkpoint.CHECKPOINT).read_bytes())
    state = checkpoint.load(run.path / checkpoint.CHECKPOINT)
    weight = state["student"]["head.weight"].numpy().tobytes()
    at = raw.find(weight)
    assert at > 0
    raw[at:at + 4] = bytes(b ^ 0xFF for b in raw[at:at + 4])
    (run.path / checkpoint.CHECKPOINT).write_bytes(bytes(raw))
    with pytest.raises(MimbenchError, match="corrupt"):
        checkpoint.load(run.path / checkpoint.CHECKPOINT)
    with caplog.at_level("WARNING"):
        assert checkpoint.load_latest(run.path)["step"] == 2
    assert "previous checkpoint (step 2)" in caplog.text

    # a truncated file: the same fallback
    (run.path / checkpoint.CHECKPOINT).write_bytes(bytes(raw[:len(raw) // 2]))
    assert checkpoint.load_latest(run.path)["step"] == 2


def test_resume_from_a_truncated_checkpoint_continues_from_the_previous(trained_run, tmp_path):
    run = tmp_path / "copy"
    run.mkdir()
    for f in trained_run.path.iterdir():
        if f.is_file():
            (run / f.name).write_bytes(f.read_bytes())
    latest = run / checkpoint.CHECKPOINT
    latest.write_bytes(latest.read_bytes()[:1000])
    (run / "results.json").unlink()
    result = run_cli("pretrain", "--resume", run)
    assert result.returncode == 0, result.stderr
    assert "using the previous checkpoint (step 2)" in result.stderr
    assert checkpoint.load(latest)["step"] == 4
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 4


def test_resuming_a_finished_run_does_nothing_and_says_so(trained_run, tmp_path):
    before = trained_run.checkpoint.read_bytes()
    result = run_cli("pretrain", "--resume", trained_run.path)
    assert result.returncode == 0, result.stderr
    assert "already finished its 4 steps" in result.stderr
    assert trained_run.checkpoint.read_bytes() == before


def test_full_disk_while_checkpointing_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / checkpoint.CHECKPOINT
    checkpoint.save_atomic({"step": 1, "w": torch.ones(3)}, path)

    def full_disk(state, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(MimbenchError, match="disk is full"):
        checkpoint.save_atomic({"step": 2, "w": torch.zeros(3)}, path, keep_previous=True)
    monkeypatch.undo()
    assert checkpoint.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint.CHECKPOINT]  # no temporary left


def test_clip_weights_of_another_architecture_name_the_keys(cli, tmp_path):
    import open_clip

    weights = tmp_path / "rn.pt"
    torch.save(open_clip.create_model("RN50").state_dict(), weights)
    result = cli("run", "--preset", "smoke", "--target", "clip", "--set", "target.model=ViT-B-16",
                 "--set", f"target.weights={weights}", "--out", tmp_path / "run")
    assert result.returncode == 2
    assert "do not fit 'ViT-B-16'" in result.stderr and "missing (e.g. visual.class_embedding" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()

