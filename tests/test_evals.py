import dataclasses

import numpy as np
import pytest
import torch

from mimbench import config as cfg
from mimbench.evals.knn import knn_predict
from mimbench.evals.probe_heads import lbfgs_probe, mae_probe
from mimbench.evals.segmentation import feature_blocks
from mimbench.evals.training import set_drop_path
from mimbench.optim import param_groups
from tests.conftest import evaluated


def separable(n=600, dim=16, classes=4, seed=0):
    """Class c sits at 6 * e_c plus unit noise: linearly separable with a wide margin."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, dim, generator=g)
    x[torch.arange(n), y] += 6
    return x, y


@pytest.mark.parametrize("probe", [lbfgs_probe, mae_probe])
def test_linear_probe_separates_separable_features(probe):
    train_x, train_y = separable(seed=0)
    val_x, val_y = separable(seed=1)
    config = cfg.LinearProbeConfig(epochs=20, warmup_epochs=2, batch_size=64, max_iter=100)
    predicted, _ = probe(train_x, train_y, val_x, 4, config, seed=0)
    assert (predicted == val_y).float().mean() > 0.99
    shuffled = val_y[torch.randperm(len(val_y), generator=torch.Generator().manual_seed(2))]
    assert (predicted == shuffled).float().mean() < 0.40  # labels unrelated to features: chance is 25 %


def test_knn_votes_as_dino_defines_it():
    """Against a plain loop: cosine similarity, the k nearest, votes weighted exp(s / T)."""
    import numpy as np

    g = torch.Generator().manual_seed(0)
    train_x, train_y = torch.randn(300, 8, generator=g), torch.randint(0, 5, (300,), generator=g)
    val_x = torch.randn(40, 8, generator=g)
    got = knn_predict(train_x, train_y, val_x, 5, k=7, temperature=0.1)
    # in chunks smaller than either split (bounded memory), the same votes
    assert torch.equal(knn_predict(train_x, train_y, val_x, 5, k=7, temperature=0.1, chunk=9), got)
    a, b = train_x.numpy(), val_x.numpy()
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    for i, v in enumerate(b / np.linalg.norm(b, axis=1, keepdims=True)):
        sims = a @ v
        nearest = np.argsort(-sims)[:7]
        votes = np.zeros(5)
        for j in nearest:
            votes[train_y[j]] += np.exp(sims[j] / 0.1)
        assert got[i].item() == votes.argmax()
    train_x, train_y = separable(seed=0)
    val_x, val_y = separable(seed=1)
    assert (knn_predict(train_x, train_y, val_x, 4, 20, 0.07) == val_y).float().mean() > 0.99


def test_knn_breaks_ties_by_train_order_then_by_class():
    """Axis-aligned features make similarities exactly 0 or 1: neighbours tie in groups and so
    do votes. Brute force: sort by (-similarity, train index), count votes, lowest class wins."""
    import math

    g = torch.Generator().manual_seed(1)
    axes = torch.randint(0, 3, (60,), generator=g)
    train_x = torch.eye(3)[axes] * torch.randint(1, 4, (60, 1), generator=g)  # lengths differ
    train_y = torch.randint(0, 4, (60,), generator=g)
    val_axes = torch.tensor([0, 1, 2, 2, 1, 0])
    val_x = torch.eye(3)[val_axes]
    for k in (1, 5, 6, 20):
        for chunk in (4, 7, 1000):
            got = knn_predict(train_x, train_y, val_x, 4, k=k, temperature=0.07, chunk=chunk)
            for i, axis in enumerate(val_axes.tolist()):
                sims = [float(axes[j] == axis) for j in range(60)]
                nearest = sorted(range(60), key=lambda j: (-sims[j], j))[:k]
                votes = [sum(math.exp(sims[j] / 0.07) for j in nearest if train_y[j] == c)
                         for c in range(4)]
                assert got[i].item() == votes.index(max(votes)), (k, chunk, i)


def test_feature_blocks_follow_beit():
    assert feature_blocks(12) == [3, 5, 7, 11]
    assert feature_blocks(4) == [0, 1, 2, 3]


def test_layer_decay_scales():
    import timm

    encoder = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=3, num_classes=0)
    head = torch.nn.Linear(192, 2)
    groups = param_groups(encoder, 0.05, 0.5, head)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert scale_of[id(encoder.patch_embed.proj.weight)] == pytest.approx(0.5**4)
    assert scale_of[id(encoder.blocks[0].attn.qkv.weight)] == pytest.approx(0.5**3)
    assert scale_of[id(encoder.blocks[2].mlp.fc1.weight)] == pytest.approx(0.5)
    assert scale_of[id(head.weight)] == 1.0
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay_of[id(encoder.pos_embed)] == 0 and decay_of[id(head.weight)] == 0.05


def test_layer_decay_groups_equal_timms_for_a_beit_encoder():
    """Our groups follow BEiT's rule (block i at decay ** (depth - i), what follows the blocks at
    1) and give a timm BEiT encoder timm's own lr scales and weight decay. They stay ours: timm's
    one-model helper does not cover the heads we add or a target's ResNet tower, and its ViT
    matcher puts the final norm with the last block, which shifts every ViT scale by one
    factor of the decay (test_layer_decay_scales pins BEiT's rule for a ViT)."""
    import timm
    from timm.optim import param_groups_layer_decay

    encoder = timm.create_model("beit_base_patch16_224", img_size=32, depth=3, embed_dim=32,
                                num_heads=2, num_classes=0)
    ours = param_groups(encoder, 0.05, 0.65)
    theirs = param_groups_layer_decay(encoder, 0.05, encoder.no_weight_decay(), layer_decay=0.65)
    rule = lambda groups: {id(p): (pytest.approx(g["lr_scale"]), g["weight_decay"])  # noqa: E731
                           for g in groups for p in g["params"]}
    assert rule(ours) == rule(theirs)
    assert len(rule(ours)) == len(list(encoder.parameters()))


@pytest.mark.parametrize("model", ["vit_tiny_patch16_224", "beit_base_patch16_224"])
def test_drop_path_rises_linearly_to_the_protocols_rate(model):
    import timm

    encoder = timm.create_model(model, img_size=32, depth=4, embed_dim=32, num_heads=2, num_classes=0)
    set_drop_path(encoder, 0.3)  # built without drop path, as a pre-trained tiny student is
    for i, block in enumerate(encoder.blocks):
        for module in (block.drop_path1, block.drop_path2):
            assert getattr(module, "drop_prob", 0.0) == pytest.approx(0.3 * i / 3, abs=1e-7)
    assert isinstance(encoder.blocks[0].drop_path1, torch.nn.Identity)
    set_drop_path(encoder, 0.0)
    assert all(isinstance(b.drop_path2, torch.nn.Identity) for b in encoder.blocks)


def test_paper_preset_evaluations_are_the_published_ones():
    """docs/protocols.md, field by field."""
    c = cfg.resolve("paper", target="clip")
    f, s, lp = c.finetune, c.segmentation, c.linear
    assert (f.epochs, f.batch_size, f.lr, f.layer_decay, f.weight_decay, f.warmup_epochs) == \
        (100, 1024, 4e-3, 0.65, 0.05, 20)
    assert (f.drop_path, f.label_smoothing, f.mixup, f.cutmix) == (0.1, 0.1, 0.8, 1.0)
    assert (s.steps, s.batch_size, s.lr, s.weight_decay, s.layer_decay, s.warmup_steps) == \
        (160_000, 16, 1e-3, 0.05, 0.65, 1500)
    assert (s.poly_power, s.drop_path, s.channels, s.aux_weight, s.pool_scales) == \
        (1.0, 0.1, 768, 0.4, (1, 2, 3, 6))
    assert (s.crop, s.stride, s.dataset) == (512, 341, "ade20k")
    assert (s.augment, s.scale, s.ratio_range, s.cat_max_ratio) == (True, (2048, 512), (0.5, 2.0), 0.75)
    assert (lp.protocol, lp.optimizer, lp.pooling, lp.block, lp.batch_size, lp.base_lr, lp.epochs,
            lp.warmup_epochs) == ("mae", "lars", "cls", -1, 16384, 0.1, 90, 10)


def test_lars_step_equals_the_rule_computed_by_hand():
    from mimbench.evals.lars import LARS

    w = torch.tensor([[3.0, 4.0]], requires_grad=True)  # ||w|| = 5
    b = torch.tensor([1.0], requires_grad=True)
    opt = LARS([w, b], lr=0.5, weight_decay=0.1, momentum=0.9, trust_coefficient=0.01)
    for step in range(2):
        w.grad, b.grad = torch.tensor([[0.0, 2.0]]), torch.tensor([0.25])
        opt.step()
    # step 1: u = g + 0.1 w = [0.3, 2.4]; trust = 0.01 * 5 / ||u||; w -= 0.5 * trust * u
    u1 = torch.tensor([0.3, 2.4])
    m1 = 0.01 * 5 / u1.norm() * u1
    w1 = torch.tensor([3.0, 4.0]) - 0.5 * m1
    u2 = torch.tensor([0.0, 2.0]) + 0.1 * w1
    m2 = 0.9 * m1 + 0.01 * w1.norm() / u2.norm() * u2
    assert torch.allclose(w.detach()[0], w1 - 0.5 * m2, atol=1e-6)
    assert torch.allclose(b.detach(), torch.tensor([1.0 - 0.5 * 0.25 - 0.5 * (0.9 * 0.25 + 0.25)]))


def test_eval_a_timm_baseline_from_the_cli(tmp_path):
    probe = evaluated("linear", "--model", "timm:random", "--preset", "smoke", out=tmp_path / "eval",
                      name="linear_probe")
    card = probe["card"]
    correct = probe["top1"] * card["val"]["size"] / 100  # top-1 is a count of the 128 val images
    assert abs(correct - round(correct)) < 1e-6 and card["protocol"] == "lbfgs" and card["classes"] == 8
    assert card["train"]["fingerprint"] and card["val"]["size"] == 128 and "wall_time_s" in card


def test_sliding_window_equals_whole_image_for_a_pointwise_model():
    """With a model that acts per pixel, averaging overlapping windows changes nothing."""
    from mimbench.evals.segmentation import predict

    class Pointwise(torch.nn.Module):
        def forward(self, x):
            return torch.cat([x, -x], 1), None  # [B, 6, h, w]

    images = torch.randn(2, 3, 20, 27)
    whole = predict(Pointwise(), images, None, None, 6)
    slid = predict(Pointwise(), images, 8, 5, 6)
    assert torch.allclose(whole, slid, atol=1e-6)


@pytest.mark.parametrize("amp, dtype", [("none", torch.float32), ("bf16", torch.bfloat16)])
def test_fine_tuning_follows_the_presets_autocast(amp, dtype):
    """optim.amp=bf16 (the paper preset) runs the fine-tuning steps and the validation under
    bf16 autocast, and the probes' features too; the output dtypes, seen by hooks, say which."""
    from mimbench.evals import finetune as ft
    from mimbench.evals.features import student_features
    from mimbench.student import build_encoder

    config = cfg.resolve("smoke", overrides=(f"optim.amp={amp}", "finetune.steps=2"))
    seen = {True: [], False: []}  # training / evaluation
    original = ft.Classifier.__init__

    def spy(self, encoder, classes):
        original(self, encoder, classes)
        self.head.register_forward_hook(lambda m, i, out: seen[m.training].append(out.dtype))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ft.Classifier, "__init__", spy)
        ft.finetune(build_encoder(config.student), config, "test")
    assert seen[True] and set(seen[True]) == {dtype}
    assert seen[False] and set(seen[False]) == {dtype}

    encoder = build_encoder(config.student)
    qkv_out = []
    encoder.blocks[0].attn.qkv.register_forward_hook(lambda m, i, out: qkv_out.append(out.dtype))
    model = student_features(encoder, config, "test")
    features = model.embed(torch.stack([model.view(np.zeros((32, 32, 3), np.uint8))] * 2))
    assert set(qkv_out) == {dtype} and features.dtype == torch.float32


def test_fine_tuning_in_chunks_of_the_device_batch_takes_the_whole_batchs_steps():
    """finetune.device_batch: a batch of 8 as two forwards of 4 (accumulated) gives the losses
    of one forward of 8 (no drop path or mixup, whose draws are per forward)."""
    from mimbench.data import build_dataset
    from mimbench.evals.finetune import train_classifier
    from mimbench.student import build_encoder

    config = cfg.resolve("smoke", target="pixels")
    train_set = build_dataset("world", split="train", image_size=32, length=64)
    runs = {}
    for limit in (None, 4):
        recipe = dataclasses.replace(config.finetune, batch_size=8, drop_path=0.0, steps=4,
                                     device_batch=limit)
        torch.manual_seed(0)
        encoder = build_encoder(config.student)
        _, runs[limit] = train_classifier(encoder, train_set, recipe, 32, 4, 1, seed=0)
    assert runs[4] == pytest.approx(runs[None], rel=1e-5)
    assert len(set(runs[None])) == 4  # the weights move: the steps differ


def test_extra_val_sets_test_the_fine_tuned_classifier(tmp_path, image_folder):
    """finetune.extra_val: a shifted world (textured objects, noisy backgrounds: difficulty 1)
    as a robustness set, and a folder holding a subset of the classes, whose images are
    classified among those classes only (ImageNet-R's protocol)."""
    from tests.conftest import write_images

    subset = write_images(tmp_path / "subset", classes=("b",), per_class=3)
    probe = evaluated("finetune", "--model", "timm:random", "--preset", "smoke", "--set",
                      "finetune.extra_val={shifted: {split: test, difficulty: 1, length: 40}}",
                      out=tmp_path / "world", name="finetune")
    assert probe["card"]["extra_val"]["shifted"]["size"] == 40 and "top1_shifted" in probe
    correct = probe["top1_shifted"] * 40 / 100
    assert abs(correct - round(correct)) < 1e-6
    folder = evaluated("finetune", "--model", "timm:random", "--preset", "smoke",
                       "--set", "eval_data.name=folder", "--set", f"eval_data.train={{root: {image_folder}}}",
                       "--set", f"eval_data.val={{root: {image_folder}}}", "--set", "run.evals=[finetune]",
                       "--set", f"finetune.extra_val={{b_only: {{root: {subset}}}}}",
                       out=tmp_path / "folder", name="finetune")
    assert folder["top1_b_only"] == 100.0  # one class to choose from: always right
    assert folder["card"]["extra_val"]["b_only"]["outputs"] == "its classes among the classifier's"


def test_extra_val_options_are_checked_before_anything_runs(cli, tmp_path):
    typo = cli("eval", "finetune", "--model", "timm:random", "--preset", "smoke", "--set",
               "finetune.extra_val={shifted: {difficultty: 1}}", "--out", tmp_path / "a")
    assert "unknown config key 'finetune.extra_val.shifted.difficultty' (did you mean 'difficulty'" in typo.stderr
    flat = cli("eval", "finetune", "--model", "timm:random", "--preset", "smoke", "--set",
               "finetune.extra_val={shifted: 1}", "--out", tmp_path / "b")
    assert "finetune.extra_val.shifted must be a mapping of dataset options" in flat.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_extra_classes_map_to_the_classifiers_outputs_by_name():
    from mimbench.errors import DataError
    from mimbench.evals.finetune import among_train_classes

    assert among_train_classes(["a", "b", "c"], ["c", "a"], "x").tolist() == [2, 0]
    assert among_train_classes(["a", "b"], ["a", "b"], "x") is None
    with pytest.raises(DataError, match="extra_val.x holds classes the fine-tuning data lacks \\(z\\)"):
        among_train_classes(["a", "b"], ["a", "z"], "x")
