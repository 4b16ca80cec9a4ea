import pytest
import torch

from mimbench.config import StudentConfig
from mimbench.student import Student, no_weight_decay_names
from mimbench.targets.base import TargetSpec

SMALL = StudentConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
SPEC = TargetSpec(kind="features", dim=48, grid=(4, 4), input_size=32)


@pytest.mark.parametrize("config", [
    SMALL,
    StudentConfig(model="beit_base_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2,
                  num_heads=2, layer_scale=0.1, pos_embed="learn",
                  extra={"use_abs_pos_emb": False, "use_rel_pos_bias": False,
                         "use_shared_rel_pos_bias": True}),
])
def test_mask_token_replaces_masked_patches_only(config):
    torch.manual_seed(0)
    student = Student(config, SPEC).eval()
    images = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :5] = True
    out = student(images, mask)
    assert out.shape == (2, 16, 48)
    # with no mask, the tokens equal the plain timm encoder's features
    plain = student.encoder.forward_features(images)[:, 1:]
    assert torch.allclose(student.tokens(images, None), plain, atol=1e-5)
    # pixels under a masked patch reach no output at all; under a visible patch they do
    changed = images.clone()
    changed[:, :, :8, :8] += 5  # patch 0, masked
    assert torch.allclose(student(images, mask), student(changed, mask), atol=1e-6)
    visible = images.clone()
    visible[:, :, 24:, 24:] += 5  # patch 15, visible
    assert not torch.allclose(student(images, mask), student(visible, mask), atol=1e-3)


def test_token_head_and_timm_names():
    spec = TargetSpec(kind="tokens", dim=512, grid=(4, 4), input_size=32, loss="ce")
    student = Student(SMALL, spec)
    assert student.head.out_features == 512
    names = set(student.encoder.state_dict())
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"} <= names


def test_weight_decay_exemptions():
    student = Student(SMALL, SPEC)
    skip = no_weight_decay_names(student)
    assert {"mask_token", "encoder.cls_token", "encoder.pos_embed", "encoder.blocks.0.norm1.weight",
            "head.bias"} <= skip
    assert "encoder.blocks.0.attn.qkv.weight" not in skip and "head.weight" not in skip


def test_sincos_position_embedding_is_maes_and_fixed_while_pre_training():
    import math
    from dataclasses import replace

    config = replace(SMALL, embed_dim=32, pos_embed="sincos")
    student = Student(config, SPEC)
    table = student.encoder.pos_embed[0]  # [1 + 16, 32]: cls, then the 4x4 patches row by row
    assert torch.equal(table[0], torch.zeros(32))
    quarter = 8  # sin(row), sin(col), cos(row), cos(col); frequencies 1 / 10000^(i / 8)
    for index, (row, col) in enumerate((r, c) for r in range(4) for c in range(4)):
        angles = [[coord / 10000 ** (i / quarter) for i in range(quarter)] for coord in (row, col)]
        expected = [f(a) for f in (math.sin, math.cos) for axis in angles for a in axis]
        assert torch.allclose(table[1 + index], torch.tensor(expected), atol=1e-6)
    assert not student.encoder.pos_embed.requires_grad
    assert "encoder.pos_embed" not in {n for n, p in student.named_parameters() if p.requires_grad}
