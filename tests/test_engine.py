import json

import pytest
import torch

from mimbench import config as cfg, engine
from mimbench.data.views import (STUDENT_MEAN, STUDENT_STD, MIMViews, StreamSampler, student_input,
                                  teacher_input)
from mimbench.engine import pretrain
from mimbench.optim import schedule
from mimbench.run_dir import RunDir
from mimbench.errors import ConfigError, TrainingDiverged
from mimbench.masking import RandomMasking
from mimbench.registry import Entry
from mimbench.student import Student
from mimbench.targets import TARGETS
from mimbench.targets.pixels import PixelTarget
from mimbench.targets.source import Targets
from mimbench.testing import TargetContractError


def test_schedule_from_epochs_and_lr_scaling():
    c = cfg.resolve("paper", target="pixels", overrides=("optim.effective_batch=512",))
    plan = schedule(c, dataset_size=1_281_167)
    assert plan["effective_batch"] == 512
    assert plan["steps_per_epoch"] == 1_281_167 // 512
    assert plan["total_steps"] == 300 * (1_281_167 // 512)
    assert plan["warmup_steps"] == 10 * (1_281_167 // 512)
    assert plan["peak_lr"] == pytest.approx(1.5e-3 * 512 / 2048)


def test_stream_sampler_splits_one_stream_across_ranks():
    one = StreamSampler(10, seed=3)
    single = [x for _, x in zip(range(30), iter(one))]
    ranks = [[x for _, x in zip(range(15), iter(StreamSampler(10, 3, rank=r, world_size=2)))] for r in (0, 1)]
    interleaved = [x for pair in zip(*ranks) for x in pair]
    assert interleaved == single
    assert sorted(i for _, i in single[:10]) == list(range(10))  # an epoch is a permutation
    restarted = [x for _, x in zip(range(10), iter(StreamSampler(10, 3, start=20)))]
    assert restarted == single[20:]


def test_views_are_two_sizes_of_the_same_crop():
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).resize((256, 256))
    views = MIMViews(32, 64, "bicubic", RandomMasking((4, 4), 5), crop_scale=(0.2, 0.6), hflip=True)
    out = views.collate([views(image, torch.Generator().manual_seed(1))])  # a batch of 1
    assert out["student"].dtype == out["teacher"].dtype == torch.uint8
    student = student_input(out["student"])[0]
    back = student * torch.tensor(STUDENT_STD).view(3, 1, 1) + torch.tensor(STUDENT_MEAN).view(3, 1, 1)
    teacher = teacher_input(out["teacher"])[0]
    assert torch.allclose(back, out["student"][0].permute(2, 0, 1).float() / 255, atol=1e-5)  # inverts
    teacher_small = torch.nn.functional.avg_pool2d(teacher[None], 2)[0]
    assert out["teacher"].shape == (1, 64, 64, 3) and out["mask"].shape == (1, 16)
    assert student.shape == (3, 32, 32) and student.is_contiguous()
    assert (back - teacher_small).abs().mean() < 0.03
    other = views.collate([views(image, torch.Generator().manual_seed(2))])
    assert (teacher_input(other["teacher"])[0] - teacher).abs().mean() > 0.05


def test_a_batch_of_views_is_each_sample_collated_alone():
    """Crops of one size are resized as one batch, others one at a time; either way each
    sample's views are the ones it gets alone."""
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for _ in range(5)]
    for crop_scale in ((1.0, 1.0), (0.3, 0.9)):
        views = MIMViews(32, 24, "bicubic", RandomMasking((4, 4), 5), crop_scale=crop_scale)
        samples = [views(im, torch.Generator().manual_seed(i)) for i, im in enumerate(images)]
        assert (len({s["crop"].shape for s in samples}) == 1) == (crop_scale == (1.0, 1.0))
        batch = views.collate(samples)
        for i, sample in enumerate(samples):
            alone = views.collate([sample])
            for key in ("student", "teacher", "mask"):
                assert torch.equal(batch[key][i], alone[key][0]), (crop_scale, key)


class NanAfterThree(PixelTarget):
    """Pixels, then NaN from the fourth call on: a target that breaks mid-run."""

    calls = 0

    def __call__(self, view):
        NanAfterThree.calls += 1
        out = super().__call__(view)
        return out if NanAfterThree.calls <= 3 else out * float("nan")


def test_nan_from_the_target_is_the_targets_fault(tmp_path, monkeypatch):
    monkeypatch.setitem(TARGETS._entries, "nan_after_3", Entry("nan_after_3", "test", NanAfterThree))
    monkeypatch.setattr(NanAfterThree, "calls", 0)
    c = cfg.resolve("smoke", target="nan_after_3")
    with pytest.raises(TargetContractError, match="target 'nan_after_3' .* features hold NaN"):
        pretrain(c, RunDir(tmp_path / "run"))


def diverging_after(steps: int, monkeypatch):
    """engine.train_step, with the loss NaN from step `steps` on: a stand-in for divergence."""
    real, calls = engine.train_step, []

    def step(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss if len(calls) <= steps else float("nan")

    monkeypatch.setattr(engine, "train_step", step)


def test_non_finite_loss_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    diverging_after(3, monkeypatch)
    c = cfg.resolve("smoke", target="pixels", overrides=("run.checkpoint_every=2",))
    run = RunDir(tmp_path / "run")
    with pytest.raises(TrainingDiverged, match="step 3 .the last good checkpoint .* is kept.*--resume"):
        pretrain(c, run)
    saved = torch.load(run.checkpoint, weights_only=True)
    assert saved["step"] == 2


def test_divergence_before_any_checkpoint_says_so(tmp_path, monkeypatch):
    diverging_after(0, monkeypatch)
    c = cfg.resolve("smoke", target="pixels")
    run = RunDir(tmp_path / "run")
    with pytest.raises(TrainingDiverged, match="step 0 .no checkpoint was written yet.*start again"):
        pretrain(c, run)
    assert not run.checkpoint.exists()


def test_teacher_gets_no_gradients_and_stays_in_eval_mode(tmp_path, monkeypatch):
    """A real provider with parameters: the timm target on a tiny random ViT."""
    c = cfg.resolve("smoke", target="timm", overrides=(
        "target.model=vit_tiny_patch16_224", "target.input_size=32", "target.weights=null",
        "optim.steps=1"))
    seen = {}
    original = engine.build_target_for

    def spy(config, progress=None, device=None):
        seen["provider"] = original(config, progress, device)
        return seen["provider"]

    monkeypatch.setattr(engine, "build_target_for", spy)
    pretrain(c, RunDir(tmp_path / "run"))  # its 2x2 grid is interpolated to the student's 4x4
    provider = seen["provider"]
    assert provider.spec.grid == (4, 4) and not provider.training
    params = list(provider.parameters())
    assert params and all(not p.requires_grad and p.grad is None for p in params)
    out = provider(torch.rand(2, 3, 32, 32))
    assert not out.requires_grad and out.grad_fn is None


def test_accumulation_gives_the_same_update_as_one_big_batch(tmp_path):
    """Two micro-batches of 4 = one batch of 8: the same samples (one data stream), targets
    standardised with the moments of all 8, and the loss divided by the masked count of all 8
    (block masking masks a different number of patches per image); so the same weights."""
    common = ("optim.steps=2", "optim.clip_grad=null", "target.standardize=true")
    big = cfg.resolve("smoke", target="pixels", overrides=(*common, "optim.batch_size=8"))
    small = cfg.resolve("smoke", target="pixels",
                        overrides=(*common, "optim.batch_size=4", "optim.accum_steps=2"))
    weights = []
    for name, c in (("big", big), ("small", small)):
        pretrain(c, RunDir(tmp_path / name))
        weights.append(torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["student"])
    for key in weights[0]:
        assert torch.allclose(weights[0][key], weights[1][key], atol=1e-5), key


def test_micro_batches_with_unequal_masked_counts_give_the_big_batch_gradient():
    """train_step over two micro-batches whose masks hide 3 and 11 patches gives the gradient
    and loss of one batch holding both: every masked token weighs the same."""
    c = cfg.resolve("smoke", target="pixels", overrides=("target.standardize=true",))
    provider = PixelTarget(img_size=32, patch_size=8)
    g = torch.Generator().manual_seed(0)
    micro = []
    for hidden in (3, 11):
        mask = torch.zeros(2, 16, dtype=torch.bool)
        mask[:, torch.randperm(16, generator=g)[:hidden]] = True
        micro.append({"student": torch.randn(2, 32, 32, 3, generator=g),  # views are channels-last
                      "teacher": torch.rand(2, 32, 32, 3, generator=g), "mask": mask,
                      "index": torch.arange(2)})
    whole = [{k: torch.cat([m[k] for m in micro]) for k in micro[0]}]
    grads, losses = [], []
    for batches in (micro, whole):
        torch.manual_seed(0)
        student = Student(c.student, provider.spec)
        losses.append(engine.train_step(student, Targets(provider, "pixels"), batches, "mse", c,
                                        torch.device("cpu")))
        grads.append({n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None})
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for name in grads[1]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


class CountingPixels(PixelTarget):
    """The pixel target, counting the images it is asked for."""

    seen = 0

    def __call__(self, view):
        CountingPixels.seen += view.shape[0]
        return super().__call__(view)


def test_cached_targets_give_the_same_run_with_one_teacher_pass_per_image(tmp_path, monkeypatch):
    monkeypatch.setitem(TARGETS._entries, "counting", Entry("counting", "test", CountingPixels))
    common = ("data.length=32", "optim.batch_size=8", "optim.steps=12", "run.log_every=1")
    losses, seen = {}, {}
    for cache in (False, True):
        CountingPixels.seen = 0
        c = cfg.resolve("smoke", target="counting", overrides=(*common, f"target.cache={str(cache).lower()}"))
        run = RunDir(tmp_path / f"cache-{cache}")
        pretrain(c, run)
        rows = [json.loads(line) for line in run.metrics.read_text().splitlines()]
        losses[cache], seen[cache] = [r["loss"] for r in rows], CountingPixels.seen
    assert seen[False] == 12 * 8 and seen[True] == 32  # 3 epochs of 32 images; each image once
    assert losses[True] == pytest.approx(losses[False], rel=1e-6)

    augmented = cfg.resolve("smoke", target="pixels", overrides=("target.cache=true", "data.hflip=true"))
    with pytest.raises(ConfigError, match="fixed views"):
        pretrain(augmented, RunDir(tmp_path / "augmented"))


def test_a_target_cache_too_big_for_memory_is_refused_before_training():
    from mimbench.targets.source import check_cache_fits
    from mimbench.targets.base import TargetSpec

    clip = TargetSpec("features", 128, (8, 8), 64)  # float32: 20,000 x 64 x 128 x 4 = 655 MB
    check_cache_fits(clip, 20_000, budget=700 * 10**6)
    with pytest.raises(ConfigError, match=r"20,000 images' targets would hold 0\.6 GiB.*target\.cache=false"):
        check_cache_fits(clip, 20_000, budget=600 * 10**6)
    tokens = TargetSpec("tokens", 8192, (14, 14), 112)  # int64 ids: 1.28M x 196 x 8 = 2.0 GB
    with pytest.raises(ConfigError, match="1.9 GiB"):
        check_cache_fits(tokens, 1_281_167, budget=2 * 10**9)


@pytest.mark.parametrize("views", ["fixed", "random crops and flips"])
def test_data_workers_feed_the_same_run(tmp_path, views):
    """Views and masks are made in worker processes (spawned by the DataLoader, with the
    views' collate) exactly as in the training process: the same losses step by step."""
    augment = () if views == "fixed" else ("data.crop_scale=[0.3, 1.0]", "data.hflip=true")
    losses = {}
    for workers in (0, 2):
        c = cfg.resolve("smoke", target="pixels", overrides=(
            *augment, "optim.steps=4", f"data.num_workers={workers}"))
        run = RunDir(tmp_path / f"workers-{workers}")
        pretrain(c, run)
        losses[workers] = [json.loads(line)["loss"] for line in run.metrics.read_text().splitlines()]
    assert len(losses[0]) == 4
    assert losses[2] == pytest.approx(losses[0], rel=1e-6)


def test_compiled_student_trains_as_the_eager_one(tmp_path):
    """run.compile (torch.compile of the student; faster on a GPU, docs/performance.md) leaves
    the losses as they are, to float rounding."""
    from tests.conftest import run_cli
    from tests.conftest import losses

    for name, flag in (("eager", "false"), ("compiled", "true")):
        result = run_cli("pretrain", "--preset", "smoke", "--target", "pixels", "--set",
                         f"run.compile={flag}", "--out", tmp_path / name)
        assert result.returncode == 0, result.stderr
    eager, compiled = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert sorted(compiled) == sorted(eager) == [1, 2, 3, 4, 5, 6]
    for step, loss in eager.items():
        assert compiled[step] == pytest.approx(loss, rel=1e-5), step
