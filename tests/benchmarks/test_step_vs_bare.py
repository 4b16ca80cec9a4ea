"""The pre-training step against the bare computation it must do, per built-in target, on the
tiny preset and on ViT-B/16 at 224 px (random weights, batch 4 on CPU):
`pytest tests/benchmarks/test_step_vs_bare.py --benchmark-enable --benchmark-only`.

Each case times the mimbench step with pytest-benchmark, then the bare step, masks and data
in the same process; extra_info holds the ratio, images/s, FLOP/s against this machine's
measured matmul peak, and the masks' and data's share of a step (docs/performance.md)."""

import statistics

import pytest
import torch

from mimbench import config as cfg
from mimbench.bench import figures, matmul_peak, prepare, timed

TINY_OPTIONS = {
    "clip": (), "dvae": (), "pixels": (),
    "timm": ("target.model=vit_tiny_patch16_224", "target.weights=null", "target.input_size=128"),
}
VITB_OPTIONS = {
    "clip": ("target.model=ViT-B-16", "target.weights=null"),
    "pixels": (),
    "timm": ("target.model=vit_base_patch16_224", "target.weights=null"),
}


@pytest.fixture(scope="module")
def dvae_weights(tmp_path_factory):
    """A DALL-E encoder of the official architecture with random weights, pickled as the
    official file is."""
    from dall_e import Encoder

    path = tmp_path_factory.mktemp("dvae") / "encoder.pkl"
    torch.save(Encoder(), path)
    return path


def measure(benchmark, config, repeats, batch_size=None):
    parts = prepare(config, batch_size)
    bare, data, masks = [], [], []

    def before_each_round():
        """Data right after the previous mimbench step, as the training loop builds it; then a
        bare step, so drifts hit both steps alike; then masks right after that step."""
        data.extend(timed(parts.data, 1, warmup=0))
        bare.extend(timed(parts.bare, 1, warmup=0))
        masks.extend(timed(parts.masks, 1, warmup=0))

    benchmark.pedantic(parts.ours, setup=before_each_round, rounds=repeats, warmup_rounds=1)
    medians = [statistics.median(times[-repeats:]) for times in (bare, masks, data)]
    benchmark.extra_info.update(figures(parts, benchmark.stats.stats.median, *medians, matmul_peak()))


@pytest.mark.parametrize("target", sorted(TINY_OPTIONS))
def test_tiny_step_vs_bare(benchmark, target):
    config = cfg.resolve("tiny", target=target, overrides=TINY_OPTIONS[target])
    measure(benchmark, config, repeats=15)


@pytest.mark.parametrize("style", ["beit", "mae"])
def test_tiny_style_step_at_75_percent(benchmark, style):
    """The two student styles on the same batch and the same 75 % random masks: the mae
    encoder runs on a quarter of the patches (docs/performance.md)."""
    config = cfg.resolve("tiny", target="clip", overrides=(
        f"student.style={style}", "mask.kind=random", "mask.ratio=0.75"))
    measure(benchmark, config, repeats=15)


@pytest.mark.parametrize("target", sorted(TINY_OPTIONS))
def test_tiny_mae_step_vs_bare(benchmark, target):
    config = cfg.resolve("tiny", target=target, overrides=(*TINY_OPTIONS[target], "student.style=mae"))
    measure(benchmark, config, repeats=15)


@pytest.mark.parametrize("target", [*sorted(VITB_OPTIONS), "dvae"])
def test_vitb16_step_vs_bare(benchmark, target, dvae_weights):
    options = VITB_OPTIONS.get(target, (f"target.weights={dvae_weights}",))
    # bf16 autocast is the paper preset's GPU setting; a CPU without bf16 units emulates it
    amp = "bf16" if torch.cuda.is_available() else "none"
    config = cfg.resolve("paper", target=target, overrides=(
        *options, "data.name=world", "data.image_size=224", "data.length=64",
        f"optim.amp={amp}", f"run.teacher_amp={amp}"))
    measure(benchmark, config, repeats=5, batch_size=4)


def test_vitb16_mae_step_vs_bare(benchmark):
    """MAE's ViT-B/16 (suites/mae_vitb16_800ep.yaml) with pixel targets, batch 4."""
    from mimbench.suites.schema import load

    config = load("mae_vitb16_800ep").runs()[0].config
    amp = "bf16" if torch.cuda.is_available() else "none"
    config = cfg.with_overrides(config, ("data.name=world", "data.image_size=224", "data.length=64",
                                         f"optim.amp={amp}", f"run.teacher_amp={amp}"))
    measure(benchmark, config, repeats=5, batch_size=4)
