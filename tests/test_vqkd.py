"""BEiT v2's VQ-KD target: the released checkpoint layout, the quantiser, bad inputs."""

import time

import pytest
import torch
import torch.nn.functional as F

from mimbench.errors import ConfigError, WeightsUnavailableError
from mimbench.targets import build_target
from mimbench.targets.vqkd import NormEMAQuantizer, beit_tower

SMALL = dict(img_size=32, patch_size=8, width=32, depth=2, heads=2, codebook_size=64,
             code_dim=8, decoder_depth=1, out_dim=24)


def released_layout(shape: dict, seed: int = 0) -> dict:
    """A random tokenizer's state written key by key as BEiT v2's released files name them:
    the ViT towers under encoder./decoder. (BEiT's names, which timm's Beit shares), the two
    task layers as Linear-Tanh-Linear, the codebook and its EMA statistics, and the teacher
    and scaling tensors the released files also carry."""
    torch.manual_seed(seed)
    w, d, side = shape["width"], shape["code_dim"], shape["img_size"] // shape["patch_size"]
    encoder = beit_tower(shape["img_size"], shape["patch_size"], 3, w, shape["depth"], shape["heads"])
    decoder = beit_tower(side, 1, d, w, shape["decoder_depth"], shape["heads"])
    codes = F.normalize(torch.randn(shape["codebook_size"], d), dim=1)
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state |= {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    for name, cin, cout in (("encode_task_layer", w, d), ("decode_task_layer", w, shape["out_dim"])):
        state |= {f"{name}.0.weight": torch.randn(cin, cin) * 0.1, f"{name}.0.bias": torch.randn(cin) * 0.1,
                  f"{name}.2.weight": torch.randn(cout, cin) * 0.1, f"{name}.2.bias": torch.randn(cout) * 0.1}
    state |= {"quantize.embedding.weight": codes, "quantize.embedding.embed_avg": codes.clone(),
              "quantize.embedding.cluster_size": torch.rand(shape["codebook_size"]),
              "quantize.embedding.initted": torch.ones(1),
              "quantize.cluster_size": torch.rand(shape["codebook_size"]),
              "teacher_model.visual.proj": torch.randn(4, 4), "scaling_layer.shift": torch.zeros(1, 3, 1, 1)}
    for name in ("encoder.blocks.0.attn.q_bias", "encoder.blocks.0.attn.v_bias",
                 "encoder.fc_norm.weight", "decoder.patch_embed.proj.weight"):
        assert name in state  # names of the released checkpoints
    return state


def test_released_format_loads_and_tokens_are_the_nearest_codes(tmp_path):
    state = released_layout(SMALL)
    path = tmp_path / "vqkd_small.pth"
    torch.save({"model": state}, path)
    target = build_target("vqkd", weights=str(path), shape=SMALL)
    assert (target.spec.kind, target.spec.dim, target.spec.grid, target.spec.input_size) == (
        "tokens", 64, (4, 4), 32)
    views = torch.rand(3, 3, 32, 32)
    tokens = target(views)
    # independently: timm's BEiT on [-1, 1] pixels, patch tokens through fc_norm, the task
    # layer by hand, then the code of largest cosine similarity
    encoder = beit_tower(32, 8, 3, 32, 2, 2).eval()
    encoder.load_state_dict({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")})
    with torch.no_grad():
        x = encoder.forward_features(views * 2 - 1)[:, 1:]
        x = F.layer_norm(x, (32,), state["encoder.fc_norm.weight"], state["encoder.fc_norm.bias"], eps=1e-6)
        z = torch.tanh(x @ state["encode_task_layer.0.weight"].T + state["encode_task_layer.0.bias"])
        z = z @ state["encode_task_layer.2.weight"].T + state["encode_task_layer.2.bias"]
        similarity = F.normalize(z, dim=-1) @ state["quantize.embedding.weight"].T  # [3, 16, 64]
    assert torch.equal(tokens, similarity.argmax(-1))
    assert len(set(tokens.flatten().tolist())) > 3  # a real spread of codes, not one


def test_official_weights_offline_fail_fast_with_the_remedy(monkeypatch, tmp_path):
    monkeypatch.setenv("MIMBENCH_OFFLINE", "1")
    monkeypatch.setenv("MIMBENCH_HOME", str(tmp_path))
    started = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as error:
        build_target("vqkd")
    assert time.perf_counter() - started < 10
    message = str(error.value)
    assert "vqkd_encoder_base_decoder_3x768x12_clip-d5036aa7.pth" in message
    assert "--set target.weights=" in message


def test_bad_tokenizers_are_one_sentence(tmp_path):
    import timm

    vit = tmp_path / "vit.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", num_classes=0).state_dict(), vit)
    with pytest.raises(WeightsUnavailableError, match=r"missing: decode_task_layer\.0\.bias") as error:
        build_target("vqkd", weights=str(vit), shape=SMALL)
    assert "unexpected: " in str(error.value) and len(str(error.value).splitlines()) == 1
    good = tmp_path / "small.pth"
    torch.save({"model": released_layout(SMALL)}, good)
    for size in (0, -3, 2.5):
        with pytest.raises(ConfigError, match="codebook size must be a positive integer"):
            build_target("vqkd", weights=str(good), shape={**SMALL, "codebook_size": size})
    with pytest.raises(ConfigError, match="gives a 4x4 token grid but the student has 8x8 patches"):
        build_target("vqkd", weights=str(good), shape=SMALL, grid=(8, 8))


def test_codebook_moves_by_normalised_ema_and_keeps_unused_codes():
    quantizer = NormEMAQuantizer(4, 3, decay=0.9)
    codes = F.normalize(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0]]), dim=1)
    quantizer.embedding.weight.copy_(codes)
    quantizer.embedding.initted.fill_(1)
    z = torch.tensor([[[2.0, 0.2, 0], [1, -0.1, 0], [0.1, 3, 0.2]]])  # near codes 0, 0, 1
    quantised, ids, _ = quantizer.train()(z)
    assert ids.tolist() == [[0, 0, 1]]
    unit = F.normalize(z[0], dim=1)
    for code, members in ((0, unit[:2]), (1, unit[2:])):
        mean = F.normalize(members.mean(0), dim=0)
        expected = F.normalize(0.9 * codes[code] + 0.1 * mean, dim=0)
        assert torch.allclose(quantizer.embedding.weight[code], expected, atol=1e-6)
    assert torch.equal(quantizer.embedding.weight[2:], codes[2:])  # unused: unchanged
    assert torch.allclose(quantizer.cluster_size, torch.tensor([0.2, 0.1, 0, 0]))
    assert torch.allclose(quantised[0], codes[[0, 0, 1]], atol=1e-6)  # the codes before the update
