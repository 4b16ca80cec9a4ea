"""Several teachers at once: each LayerNorm'd per token, the loss shared by the weights."""

import pytest
import torch
import torch.nn.functional as F

from mimbench.errors import ConfigError
from mimbench.targets import build_target
from tests.conftest import run_cli

TINY_VIT = {"name": "timm", "model": "vit_tiny_patch16_224", "input_size": 32, "weights": None}
CONTEXT = {"grid": (4, 4), "img_size": 32, "patch_size": 8}


def test_each_teachers_tokens_are_layernormed_and_weigh_their_share_of_the_loss():
    torch.manual_seed(0)
    multi = build_target("multi", teachers=["pixels", TINY_VIT], weights=[3, 1], **CONTEXT)
    torch.manual_seed(0)
    vit = build_target("timm", **{k: v for k, v in TINY_VIT.items() if k != "name"})
    pixels = build_target("pixels", img_size=32, patch_size=8)
    assert multi.spec.dim == pixels.spec.dim + 192 and multi.spec.grid == (4, 4)
    views = torch.rand(2, 3, 32, 32)
    out = multi(views)  # [2, 16, D]
    d_pix = pixels.spec.dim
    assert vit.spec.grid == (2, 2)  # 32 px in 16-px patches: upsampled to the student's 4x4
    vit_tokens = F.interpolate(vit(views).transpose(1, 2).reshape(2, 192, 2, 2), size=(4, 4), mode="bilinear",
                               align_corners=False)
    expected_vit = F.layer_norm(vit_tokens.flatten(2).transpose(1, 2), (192,))
    total = multi.spec.dim
    assert torch.allclose(out[..., :d_pix], F.layer_norm(pixels(views), (d_pix,)) * (0.75 * total / d_pix) ** 0.5,
                          atol=1e-4)
    assert torch.allclose(out[..., d_pix:], expected_vit * (0.25 * total / 192) ** 0.5, atol=1e-4)
    # under MSE against a zero prediction, each teacher's channels carry its share of the loss
    per_token = out.square() / total  # [2, 16, D]
    shares = per_token[..., :d_pix].sum(-1).mean(), per_token[..., d_pix:].sum(-1).mean()
    assert shares == (pytest.approx(0.75, abs=1e-3), pytest.approx(0.25, abs=1e-3))


def test_refusals_say_what_to_set():
    with pytest.raises(ConfigError, match="needs two or more teachers"):
        build_target("multi", teachers=["pixels"], **CONTEXT)
    with pytest.raises(ConfigError, match="add --set target.standardize=false"):
        build_target("multi", teachers=["pixels", TINY_VIT], weights=[1, 2], standardize=True, **CONTEXT)
    with pytest.raises(ConfigError, match="one positive weight per teacher"):
        build_target("multi", teachers=["pixels", TINY_VIT], weights=[1], **CONTEXT)
    with pytest.raises(ConfigError, match="one positive weight per teacher \\(2\\), not \\['a', 1\\]"):
        build_target("multi", teachers=["pixels", TINY_VIT], weights=["a", 1], **CONTEXT)
    with pytest.raises(ConfigError, match="one positive weight per teacher \\(2\\), not \\[True, 1\\]"):
        build_target("multi", teachers=["pixels", TINY_VIT], weights=[True, 1], **CONTEXT)  # YAML's yes
    with pytest.raises(ConfigError, match="unknown config key 'target.teachers\\[1\\].modle' \\(did you mean 'model'"):
        build_target("multi", teachers=["pixels", {"name": "timm", "modle": "vit_tiny_patch16_224"}], **CONTEXT)
    with pytest.raises(ConfigError, match="target.teachers\\[0\\] must be a target's name or a mapping with name:"):
        build_target("multi", teachers=[{"model": "x"}, "pixels"], **CONTEXT)
    with pytest.raises(ConfigError, match="needs target.loss mse or smooth_l1, not 'cosine'"):
        build_target("multi", teachers=["pixels", TINY_VIT], target_loss="cosine", **CONTEXT)


def test_a_run_regresses_two_teachers_from_the_cli(tmp_path):
    result = run_cli("run", "--preset", "smoke", "--target", "multi", "--set",
                     "target.teachers=[pixels, {name: timm, model: vit_tiny_patch16_224, input_size: 32, weights: null}]",
                     "--set", "target.weights=[1, 1]", "--set", "target.standardize=false",
                     "--set", "run.evals=[linear]", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    refused = run_cli("pretrain", "--preset", "smoke", "--target", "multi",
                      "--set", 'target.teachers=[pixels, {name: dvae, weights: "teacher:dvae-smoke"}]',
                      "--set", "target.standardize=false", "--out", tmp_path / "tokens")
    assert "teacher 'dvae' gives token ids; the multi target regresses features only" in refused.stderr
