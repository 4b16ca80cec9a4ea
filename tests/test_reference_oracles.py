"""mimbench held against the published reference code, restated in tests/reference.py.

Every model here is a real timm model with random weights, shrunk to 32 px, patch 8, width 32,
two blocks. Where a comparison would pass with parameters at their initial values (zero
relative position tables, unit LayerNorms, a head initialised near zero), the test first gives
them random values, so that a wrong wiring shows in the numbers.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.models.beit import Beit
from torch import nn

from mimbench.config import resolve
from mimbench.student import MaeStudent, Student, build_encoder
from mimbench.targets.base import TargetSpec
from tests import reference as ref

SHAPE = ("student.img_size=32", "student.patch_size=8", "student.embed_dim=32", "student.depth=2",
         "student.num_heads=2", "student.drop_path=0.0")
GRID = (4, 4)
SPEC = TargetSpec(kind="features", dim=24, grid=GRID, input_size=32)


def paper_config(*overrides: str):
    """The paper preset (BEiT's ViT-B/16 recipe: shared relative position bias, layer scale,
    no absolute positions) at the test's size."""
    return resolve(preset="paper", target="pixels", overrides=SHAPE + overrides)


def beit_config():
    return paper_config("mask.num_masked=6", "mask.min_block=2")


def mae_config(decoder_dim: int = 64, decoder_heads: int = 2):
    return paper_config("student.style=mae", "student.model=vit_small_patch16_224", "student.extra={}",
                        f"student.decoder_dim={decoder_dim}", f"student.decoder_heads={decoder_heads}",
                        "student.decoder_depth=2", "mask.num_masked=10", "mask.min_block=2")


def small_vit() -> nn.Module:
    return timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8,
                             embed_dim=32, depth=2, num_heads=2, num_classes=0)


def small_beit(**kwargs) -> nn.Module:
    options = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=0,
                   use_abs_pos_emb=False, use_rel_pos_bias=False, use_shared_rel_pos_bias=True,
                   init_values=0.1)
    return timm.create_model("beit_base_patch16_224", pretrained=False, **{**options, **kwargs})


def scramble(module: nn.Module, *heads: nn.Linear, seed: int = 0) -> None:
    """Random values where initial ones would hide a wiring error: LayerNorm scales and shifts,
    relative position tables, cls/mask tokens, and the given heads."""
    g = torch.Generator().manual_seed(seed)

    def rand(t, scale):
        return torch.randn(t.shape, generator=g) * scale

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                m.weight.copy_(1 + rand(m.weight, 0.5))
                m.bias.copy_(rand(m.bias, 0.5))
        for name, p in module.named_parameters():
            if "relative_position_bias_table" in name or name.split(".")[-1] in ("cls_token", "mask_token"):
                p.copy_(rand(p, 0.5))
        for head in heads:
            head.weight.copy_(rand(head.weight, 0.3))
            head.bias.copy_(rand(head.bias, 0.3))


def random_mask(batch: int, n: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, n, dtype=torch.bool)
    for row in mask:
        row[torch.randperm(n, generator=g)[:k]] = True
    return mask


def block_fns(encoder: nn.Module) -> list:
    """The encoder's blocks as (tokens, shared bias) -> tokens: timm's BEiT block takes the
    shared bias by keyword, a ViT block takes none."""
    if isinstance(encoder, Beit):
        return [lambda x, bias, blk=blk: blk(x, shared_rel_pos_bias=bias) for blk in encoder.blocks]
    return [lambda x, bias, blk=blk: blk(x) for blk in encoder.blocks]


def reference_tokens(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The tokens after the encoder's last block, by the reference wiring, from its parameters."""
    shared = getattr(encoder, "rel_pos_bias", None)
    bias = ref.beit_shared_bias(shared.relative_position_bias_table, GRID) if shared is not None else None
    return ref.vit_tokens(images, patch_weight=encoder.patch_embed.proj.weight,
                          patch_bias=encoder.patch_embed.proj.bias, cls_token=encoder.cls_token,
                          pos_embed=encoder.pos_embed, blocks=block_fns(encoder), shared_bias=bias)


def assert_close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    diff = (got - want).abs().max().item()
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), f"{what}: max difference {diff:.3g}"


# ---------------------------------------------------------------- 1. BEiT pre-training forward

def test_beit_student_forward_matches_unilm_pretraining_forward():
    """unilm beit/modeling_pretrain.py: mask token blend, cls, shared relative bias, FINAL
    LayerNorm, lm_head."""
    torch.manual_seed(0)
    config = beit_config()
    student = Student(config.student, SPEC).eval()
    enc = student.encoder
    assert isinstance(enc, Beit) and enc.rel_pos_bias is not None and enc.pos_embed is None
    norm = enc.norm
    assert isinstance(norm, nn.LayerNorm) and norm.elementwise_affine and norm.weight.requires_grad, (
        f"BEiT normalises every token with a learnable final LayerNorm before lm_head; "
        f"student.encoder.norm is {type(norm).__name__}")
    assert norm.eps == 1e-6, f"BEiT's final LayerNorm has eps 1e-6, not {norm.eps}"
    scramble(student, student.head)
    images = torch.randn(3, 3, 32, 32)
    masked = random_mask(3, 16, config.mask.num_masked)
    with torch.no_grad():
        out = student(images, masked)  # [B, N, dim]
        kwargs = dict(patch_weight=enc.patch_embed.proj.weight, patch_bias=enc.patch_embed.proj.bias,
                      cls_token=enc.cls_token, mask_token=student.mask_token, pos_embed=enc.pos_embed,
                      blocks=block_fns(enc), rel_pos_table=enc.rel_pos_bias.relative_position_bias_table,
                      grid=GRID, norm_weight=norm.weight, norm_bias=norm.bias, norm_eps=1e-6,
                      head_weight=student.head.weight, head_bias=student.head.bias)
        expected_masked = ref.beit_mim_forward(images, masked, **kwargs)
        expected_all = ref.beit_mim_forward(images, masked, all_tokens=True, **kwargs)
    assert_close(out[masked], expected_masked, "masked positions")
    assert_close(out, expected_all, "all positions")


# ---------------------------------------------------------------- 2. MAE pre-training

def test_mae_student_forward_matches_mae_forward_encoder_and_decoder():
    """mae models_mae.py forward_encoder/forward_decoder with the kept set given by the mask."""
    torch.manual_seed(0)
    student = MaeStudent(mae_config().student, SPEC).eval()
    enc = student.encoder
    scramble(student, student.head)
    decoder_blocks = getattr(student, "decoder_blocks", None) or student.decoder
    d = student.mask_token.shape[-1]
    images = torch.randn(3, 3, 32, 32)
    masked = random_mask(3, 16, 10, seed=1)
    with torch.no_grad():
        out = student(images, masked)
        expected = ref.mae_forward(
            images, masked, torch.Generator().manual_seed(3),
            patch_weight=enc.patch_embed.proj.weight, patch_bias=enc.patch_embed.proj.bias,
            cls_token=enc.cls_token, pos_embed=enc.pos_embed, blocks=list(enc.blocks), norm=enc.norm,
            decoder_embed=student.decoder_embed, mask_token=student.mask_token,
            decoder_pos_embed=torch.cat([torch.zeros(1, 1, d), student.decoder_pos_embed], 1),
            decoder_blocks=list(decoder_blocks), decoder_norm=student.decoder_norm,
            decoder_pred=student.head)
    assert_close(out[masked], expected[masked], "masked positions")
    assert_close(out, expected, "all positions")


def test_mae_decoder_initialisation_is_maes():
    """mae models_mae.py initialize_weights/_init_weights: decoder Linears (decoder_embed, the
    blocks', decoder_pred = the student's head) xavier-uniform with zero bias, decoder
    LayerNorms eps 1e-6 (unit scale, zero shift), mask_token normal(.02)."""
    torch.manual_seed(0)
    student = MaeStudent(mae_config(decoder_dim=256, decoder_heads=8).student, SPEC)
    decoder = getattr(student, "decoder_blocks", None) or student.decoder
    linears = [student.decoder_embed] + [m for m in decoder.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 + 4 * 2  # qkv, proj, fc1, fc2 per block
    linears.append(student.head)
    for lin in linears:
        bound = ref.xavier_uniform_bound(lin.weight)
        w = lin.weight.detach()
        assert lin.bias is not None and torch.count_nonzero(lin.bias) == 0, f"{lin}: bias not zero"
        assert w.abs().max() <= bound, f"{lin}: weights beyond the xavier bound {bound:.4f}"
        std, xavier_std = w.std().item(), bound / math.sqrt(3)
        assert abs(std / xavier_std - 1) < 0.04, (
            f"{lin}: weight std {std:.4f} is not xavier's {xavier_std:.4f} "
            f"(torch's default would be {1 / math.sqrt(3 * lin.in_features):.4f})")
    norms = [m for m in decoder.modules() if isinstance(m, nn.LayerNorm)] + [student.decoder_norm]
    assert len(norms) == 2 * 2 + 1
    for norm in norms:
        assert norm.eps == ref.MAE_NORM_EPS, f"decoder LayerNorm eps {norm.eps}, MAE's is 1e-6"
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
    token = student.mask_token.detach().flatten()
    assert abs(token.std().item() / ref.MAE_MASK_TOKEN_STD - 1) < 0.2 and abs(token.mean().item()) < 0.01


# ---------------------------------------------------------------- 3. layer decay ids

def test_layer_ids_follow_beit_get_num_layer_for_vit():
    """unilm beit/optim_factory.py get_num_layer_for_vit over every parameter of a timm BEiT
    with a shared relative position bias."""
    from mimbench.optim import layer_id

    encoder = small_beit()
    depth = len(encoder.blocks)
    names = [name for name, _ in encoder.named_parameters()]
    assert "rel_pos_bias.relative_position_bias_table" in names
    got = {name: layer_id(name, depth) for name in names}
    want = {name: ref.beit_layer_id(name, depth) for name in names}
    wrong = {name: (got[name], want[name]) for name in names if got[name] != want[name]}
    assert not wrong, f"(mimbench, BEiT) layer ids differ: {wrong}"


def test_layer_id_of_the_mask_token_is_the_embeddings():
    """unilm beit/optim_factory.py get_num_layer_for_vit: 'mask_token' is layer 0 with cls_token
    and pos_embed (a name only a pre-training model has; the rule names it)."""
    from mimbench.optim import layer_id

    assert layer_id("mask_token", 12) == ref.beit_layer_id("mask_token", 12) == 0


# ---------------------------------------------------------------- 4. shared bias per block

def test_per_block_rel_pos_bias_matches_beit_checkpoint_expansion():
    """unilm beit/run_class_finetuning.py: the shared table copied into every block."""
    from mimbench.evals.backbone import per_block_rel_pos_bias

    torch.manual_seed(0)
    shared = small_beit().eval()
    scramble(shared)
    table = shared.rel_pos_bias.relative_position_bias_table.detach().clone()
    images = torch.randn(2, 3, 32, 32)
    # BEiT's way: a model with a table per block, loaded from the expanded checkpoint
    per_block = small_beit(use_rel_pos_bias=True, use_shared_rel_pos_bias=False).eval()
    per_block.load_state_dict(ref.expand_shared_rel_pos_bias(shared.state_dict(), len(shared.blocks)))
    with torch.no_grad():
        before = shared.forward_features(images)
        expected = per_block.forward_features(images)
    assert torch.allclose(before, expected, atol=1e-5)  # the expansion keeps the function

    encoder = per_block_rel_pos_bias(shared).eval()
    assert getattr(encoder, "rel_pos_bias", None) is None, "the shared table should be gone"
    tables = [block.attn.relative_position_bias_table for block in encoder.blocks]
    for t in tables:
        assert isinstance(t, nn.Parameter) and t.requires_grad
        assert torch.equal(t.detach(), table)
    assert len({t.data_ptr() for t in tables}) == len(tables), "each block needs its own table"
    with torch.no_grad():
        got = encoder.forward_features(images)
    assert torch.allclose(got, expected, atol=1e-5)
    assert set(encoder.state_dict()) == set(per_block.state_dict())


# ---------------------------------------------------------------- 5. fine-tuning head

@pytest.mark.parametrize("family", ["vit", "beit"])
def test_finetune_classifier_matches_mean_pooling_fc_norm_head(family):
    """unilm beit/modeling_finetune.py (use_mean_pooling) and mae models_vit.py
    (global_pool=True): no final norm, patch tokens averaged, fc_norm, linear head."""
    from mimbench.evals.finetune import Classifier

    torch.manual_seed(0)
    encoder = small_vit() if family == "vit" else build_encoder(beit_config().student)
    classifier = Classifier(encoder, 7).eval()
    enc = classifier.encoder
    assert isinstance(enc.norm, nn.Identity), f"the encoder's final norm is {type(enc.norm).__name__}"
    fc_norm, head = classifier.fc_norm, classifier.head
    assert isinstance(fc_norm, nn.LayerNorm) and isinstance(head, nn.Linear)
    scramble(classifier, head)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        got = classifier(images)
        expected = ref.finetune_logits(reference_tokens(enc, images), fc_norm_weight=fc_norm.weight,
                                       fc_norm_bias=fc_norm.bias, fc_norm_eps=fc_norm.eps,
                                       head_weight=head.weight, head_bias=head.bias)
    assert_close(got, expected, "logits")


def test_finetune_fc_norm_eps_is_the_references():
    """BEiT's beit_base_patch16_224 and MAE's vit_base_patch16 build fc_norm with
    norm_layer = LayerNorm(eps=1e-6)."""
    from mimbench.evals.finetune import Classifier

    classifier = Classifier(small_vit(), 7)
    assert classifier.fc_norm.eps == 1e-6


# ---------------------------------------------------------------- 6. frozen features

@pytest.mark.parametrize("pooling", ["cls", "avg"])
@pytest.mark.parametrize("last", ["index", "minus_one"])
def test_last_block_frozen_features_are_read_after_the_final_norm(pooling, last):
    """mae main_linprobe.py / dino eval_knn.py (normed cls), dino eval_linear.py avgpool
    (mean of normed patch tokens)."""
    from mimbench.evals.backbone import pooled_features

    torch.manual_seed(0)
    encoder = small_vit().eval()
    assert isinstance(encoder.norm, nn.LayerNorm)
    scramble(encoder)
    block = len(encoder.blocks) - 1 if last == "index" else -1
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        got = pooled_features(encoder, images, block=block, pooling=pooling)
        expected = ref.frozen_last_block_features(reference_tokens(encoder, images), encoder.norm.weight,
                                                  encoder.norm.bias, 1e-6, pooling)
    assert_close(got, expected, f"{pooling} features of the last block")


def test_mae_probe_head_is_mae_linprobes(monkeypatch):
    """mae main_linprobe.py: BatchNorm1d(affine=False, eps=1e-6) then Linear, weight
    trunc_normal std .01, bias 0. The head mae_probe builds is caught as it is made (no
    training epochs, so its weights are still the initial ones)."""
    from mimbench.config import LinearProbeConfig
    from mimbench.evals.linear_probe import mae_probe

    made = []

    class Recording(nn.Sequential):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(torch.nn, "Sequential", Recording)
    dim, classes = 256, 16
    cfg = dataclasses.replace(LinearProbeConfig(), protocol="mae", optimizer="sgd", epochs=0,
                              warmup_epochs=0, batch_size=8)
    torch.manual_seed(0)
    x, y = torch.randn(16, dim), torch.arange(16) % classes
    mae_probe(x, y, x, classes, cfg, seed=0)
    heads = [m for m in made if len(m) and isinstance(m[0], nn.BatchNorm1d)]
    assert len(heads) == 1, f"expected one BatchNorm + Linear head, saw {made}"
    got, want = heads[0], ref.mae_linprobe_head(dim, classes)
    assert [type(m) for m in got] == [type(m) for m in want]
    bn, want_bn = got[0], want[0]
    for attr in ("num_features", "affine", "eps", "momentum", "track_running_stats"):
        assert getattr(bn, attr) == getattr(want_bn, attr), attr
    lin = got[1]
    assert (lin.in_features, lin.out_features) == (dim, classes) and lin.bias is not None
    assert torch.count_nonzero(lin.bias) == 0
    assert abs(lin.weight.std().item() / 0.01 - 1) < 0.1 and abs(lin.weight.mean().item()) < 1e-3


# ---------------------------------------------------------------- 7. evaluation views

@pytest.mark.parametrize("crop_pct", [0.875, 1.0])
@pytest.mark.parametrize("form", ["pil", "array"])
def test_eval_views_match_timm_eval_transform(crop_pct, form):
    """timm create_transform(is_training=False): shorter side to floor(S / crop_pct), bicubic,
    centre S x S crop (BEiT datasets.build_transform, MAE util/datasets.py: int(S / crop_pct)).
    Non-square images shrunk, and a square one the size of the world's images (32 px), which
    crop_pct 0.875 enlarges to 36 before the crop."""
    from mimbench.data.views import STUDENT_MEAN, STUDENT_STD
    from mimbench.evals.data import eval_batch

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (50, 37, 3), dtype=np.uint8),
              rng.integers(0, 256, (37, 61, 3), dtype=np.uint8),
              rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)]
    pils = [Image.fromarray(a) for a in arrays]
    size = 32
    transform = timm.data.create_transform(input_size=size, is_training=False, interpolation="bicubic",
                                           crop_pct=crop_pct, mean=STUDENT_MEAN, std=STUDENT_STD)
    expected = torch.stack([transform(p) for p in pils])
    got = eval_batch(pils if form == "pil" else arrays, size, crop_pct)
    assert got.shape == expected.shape == (3, 3, size, size)
    tolerance = 1.5 / 255 / min(STUDENT_STD)  # one uint8 level of rounding
    diff = (got - expected).abs().max().item()
    assert diff <= tolerance, f"max difference {diff:.4f} > {tolerance:.4f}"


# ---------------------------------------------------------------- 8. segmentation heads

def leaf_order(module: nn.Module, run) -> list[nn.Module]:
    """The leaf modules of `module` in the order `run()` calls them."""
    order, handles = [], []
    for m in module.modules():
        if not list(m.children()):
            handles.append(m.register_forward_hook(lambda mod, args, out: order.append(mod)))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return order


def aux_head(segmenter: nn.Module) -> nn.Module:
    for name in ("aux", "aux_head", "auxiliary_head"):
        if isinstance(getattr(segmenter, name, None), nn.Module):
            return getattr(segmenter, name)
    raise AssertionError("the segmenter has no auxiliary head attribute (aux, aux_head, auxiliary_head)")


def test_upernet_and_fcn_heads_run_as_mmseg_beit_config():
    """mmseg decode_head.py BaseDecodeHead.cls_seg (Dropout2d(0.1) before conv_seg) for the
    UPerHead, and fcn_head.py FCNHead as upernet_beit.py sets it for the auxiliary head (one 3x3
    conv + BN + ReLU, no concat, Dropout2d(0.1), 1x1 conv_seg, on pyramid level in_index 2)."""
    from mimbench.evals.segmentation import Segmenter

    torch.manual_seed(0)
    encoder = build_encoder(beit_config().student)
    classes, channels = 5, 48
    segmenter = Segmenter(encoder, classes, channels, (1, 2, 3, 6)).eval()
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        order = leaf_order(segmenter, lambda: segmenter(images))
    head_leaves = set(segmenter.head.modules())
    classifiers = [i for i, m in enumerate(order) if m in head_leaves and isinstance(m, nn.Conv2d)
                   and m.out_channels == classes and m.kernel_size == (1, 1)]
    assert len(classifiers) == 1
    before = order[classifiers[0] - 1]
    assert isinstance(before, nn.Dropout2d) and before.p == ref.SEG_DROPOUT, (
        f"mmseg's cls_seg runs Dropout2d(0.1) right before the classifier conv; here it is {before}")

    aux = aux_head(segmenter)
    with torch.no_grad():
        aux_order = [ref.describe_leaf(m) for m in leaf_order(aux, lambda: segmenter(images))]
    width = aux_order[0][2] if aux_order and aux_order[0][0] == "conv" else None
    assert aux_order == ref.mmseg_fcn_aux_layers(encoder.embed_dim, width, classes), aux_order
    assert width == channels  # segmentation.aux_channels unset: as wide as UperNet


def test_aux_head_is_256_wide_at_upernet_768():
    """unilm beit/semantic_segmentation upernet_beit_base_12_512_slide_160k_ade20k_*.py: UPerHead
    768 channels, FCNHead 256 (the paper preset's segmentation section, built on the meta
    device: structure only)."""
    from mimbench.evals.segmentation import Segmenter

    seg = beit_config().segmentation
    assert seg.channels == 768
    encoder = build_encoder(beit_config().student)
    with torch.device("meta"):
        segmenter = Segmenter(encoder, 150, seg.channels, seg.pool_scales, seg.aux_channels)
    convs = [m for m in aux_head(segmenter).modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].out_channels == ref.AUX_CHANNELS_AT_768, (
        f"aux conv {convs[0]} has {convs[0].out_channels} output channels, mmseg/BEiT's FCNHead has 256")
