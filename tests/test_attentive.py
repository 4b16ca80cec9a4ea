"""The attentive probe: a learned query reads the patch tokens that carry the class."""

import dataclasses

import pytest
import torch

from mimbench import config as cfg
from mimbench.evals import attentive
from mimbench.evals.features import FrozenModel
from tests.conftest import evaluated


class Tokens(torch.utils.data.Dataset):
    """Images that are their own 16 tokens of width 8: the class sits, one-hot and strong, in
    one token at a random position; the 15 others are noise. Averaging dilutes it 16-fold."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 4, (n,), generator=g)
        self.x = torch.randn(n, 16, 8, generator=g)
        where = torch.randint(0, 16, (n,), generator=g)
        self.x[torch.arange(n), where] = 0
        self.x[torch.arange(n), where, self.labels] = 6.0
        self.x[torch.arange(n), where, 4] = 6.0  # the token says "read me"

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.x[i], int(self.labels[i])


def test_the_query_learns_to_read_the_token_that_holds_the_class(monkeypatch):
    splits = Tokens(512, 0), Tokens(256, 1)
    monkeypatch.setattr(attentive, "eval_splits", lambda config: splits)
    model = FrozenModel(view=lambda x: x, embed=None, key="", source="tokens", features="raw",
                        patch_map=None, tokens=lambda views: views)
    config = cfg.resolve("smoke", target="pixels")
    config = dataclasses.replace(config, attentive=dataclasses.replace(config.attentive, epochs=60, batch_size=64,
                                                                       lr=3e-3))
    result = attentive.attentive_probe(model, config)
    assert result["top1"] > 90
    predicted, labels = result["per_image"]
    assert result["top1"] == pytest.approx((predicted == labels).float().mean().item() * 100)
    assert labels.tolist() == splits[1].labels.tolist()


def test_eval_attentive_from_the_cli(tmp_path):
    run = tmp_path / "run"
    probe = evaluated("attentive", "--model", "timm:random", "--preset", "smoke", "--set", "attentive.epochs=2",
                      out=run, name="attentive_probe")
    card = probe["card"]
    assert card["heads"] == 4 and card["classes"] == 8 and card["predictions"] == "predictions/attentive_probe.npz"
    assert card["steps"] == 2 * 1 and card["val"]["size"] == 128  # 256 train images: one batch an epoch


def test_tokens_that_would_fill_the_memory_are_refused_in_one_sentence():
    from mimbench.errors import ConfigError
    from mimbench.memory import refuse_over_half

    imagenet = 1_281_167 * 196 * 768 * 4  # ViT-B/16's tokens of ImageNet's train split: 718.4 GiB
    with pytest.raises(ConfigError, match=r"tokens would hold 718\.4 GiB, more than half of this machine's memory; evaluate"):
        refuse_over_half(imagenet, "the attentive probe's tokens", "evaluate on a subset", budget=64 * 2**30)
    refuse_over_half(256 * 16 * 32 * 4, "the smoke preset's tokens", "", budget=64 * 2**30)
