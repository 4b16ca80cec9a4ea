import pytest
import torch

from mimbench.config import StudentConfig
from mimbench.optim import exempt_from_weight_decay, param_groups
from mimbench.student import Student
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
    mask = torch.arange(16).expand(2, 16) < 5  # the first 5 patches of each image
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
    skip = {n for n, p in student.named_parameters() if exempt_from_weight_decay(n, p)}
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


MAE = StudentConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, style="mae",
                    decoder_depth=1, decoder_dim=16, decoder_heads=2)


def test_mae_encoder_never_sees_a_masked_patch():
    from mimbench.student import build_student

    torch.manual_seed(0)
    student = build_student(MAE, SPEC).eval()
    images = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [0, 3, 5, 6, 9, 12]] = True
    mask[1, [1, 2, 7, 8, 14, 15]] = True  # the same count, other patches
    seen = []
    student.encoder.blocks[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    tokens, index = student.encode_visible(images, mask)
    assert seen == [(2, 1 + 10, 32)]  # the cls token and the 10 visible patches, nothing else
    assert index.tolist() == [[i for i in range(16) if not mask[r, i]] for r in range(2)]
    changed = images.clone()
    for row in range(2):  # new pixels under every masked patch of each image
        for patch in mask[row].nonzero().flatten().tolist():
            top, left = 8 * (patch // 4), 8 * (patch % 4)
            changed[row, :, top:top + 8, left:left + 8] = torch.randn(3, 8, 8)
    assert torch.equal(student.encode_visible(changed, mask)[0], tokens)  # bitwise
    # the visible tokens are the encoder's own computation on those patches: timm's blocks on
    # [cls, visible patches] with their position embeddings, written out independently
    enc = student.encoder
    x = enc.patch_embed(images) + enc.pos_embed[:, 1:]
    for row in range(2):
        kept = x[row, ~mask[row]]  # [10, 32]
        sequence = torch.cat([enc.cls_token[0] + enc.pos_embed[0, :1], kept])[None]
        assert torch.allclose(enc.norm(enc.blocks(sequence))[0], tokens[row], atol=1e-6)
    out = student(images, mask)
    assert out.shape == (2, 16, 48)
    # the decoder sees the masked positions: changing a visible patch moves masked predictions
    visible = images.clone()
    visible[:, :, 8:16, 16:24] += 5  # patch 6: masked in image 0, visible in image 1
    moved = student(visible, mask)
    assert torch.equal(moved[0], out[0]) and not torch.allclose(moved[1][mask[1]], out[1][mask[1]])


def test_mae_student_trains_encoder_and_decoder_and_keeps_timm_names():
    from mimbench.student import build_student

    student = build_student(MAE, SPEC)
    assert set(student.encoder.state_dict()) == set(Student(SMALL, SPEC).encoder.state_dict())
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 4:16] = True
    student(torch.randn(2, 3, 32, 32), mask)[mask].square().mean().backward()
    for name, param in student.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_mae_refuses_uneven_masks_and_students_without_absolute_positions():
    from dataclasses import replace

    from mimbench.errors import ConfigError
    from mimbench.student import build_student

    student = build_student(MAE, SPEC)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :4], mask[1, :5] = True, True
    with pytest.raises(ValueError, match="same number of masked patches"):
        student(torch.randn(2, 3, 32, 32), mask)
    beit = replace(MAE, model="beit_base_patch16_224", pos_embed="learn",
                   extra={"use_abs_pos_emb": False, "use_rel_pos_bias": True})
    with pytest.raises(ConfigError, match="student.style=mae needs a vit_\\* student"):
        build_student(beit, SPEC)


def test_pre_training_and_fine_tuning_exempt_the_same_tensors_from_weight_decay():
    """BEiT's student (shared relative position bias) as the paper preset builds it: the
    encoder tensors without weight decay are the same in pre-training's AdamW groups and in
    fine-tuning's layer-decay groups."""
    config = StudentConfig(model="beit_base_patch16_224", img_size=32, patch_size=8, embed_dim=32,
                           depth=2, num_heads=2, layer_scale=0.1, pos_embed="learn",
                           extra={"use_abs_pos_emb": True, "use_rel_pos_bias": False,
                                  "use_shared_rel_pos_bias": True})
    student = Student(config, SPEC)
    names = {id(p): n for n, p in student.named_parameters()}
    pre = {names[id(p)].removeprefix("encoder.") for g in param_groups(student, 0.05) if g["weight_decay"] == 0.0
           for p in g["params"] if names[id(p)].startswith("encoder.")}
    names = {id(p): n for n, p in student.encoder.named_parameters()}
    groups = param_groups(student.encoder, weight_decay=0.05, layer_decay=0.65, head=torch.nn.Linear(32, 8))
    fine = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"] if id(p) in names}
    assert pre == fine
    assert {"rel_pos_bias.relative_position_bias_table", "cls_token", "pos_embed",
            "blocks.0.gamma_1", "blocks.0.attn.q_bias"} <= pre
    assert "blocks.0.attn.qkv.weight" not in pre


@pytest.mark.parametrize("shape", [{}, {"reg_tokens": 2}, {"no_embed_class": True, "reg_tokens": 1},
                                   {"class_token": False, "global_pool": "avg"}])
def test_add_positions_is_what_timms_vision_transformer_does(shape):
    """The student puts mask tokens in before the positions, so it adds them itself
    (student.add_positions); the result equals timm's own (its private _pos_embed)."""
    import timm

    from mimbench.student import add_positions

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, **{"global_pool": "token", **shape})
    torch.nn.init.normal_(vit.pos_embed)
    x = vit.patch_embed(torch.rand(2, 3, 32, 32))  # [2, 4, 192]
    assert torch.equal(add_positions(vit, x), vit._pos_embed(x))
