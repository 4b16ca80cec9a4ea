"""The real targets against the libraries' own computations, with random weights in local files."""

import json
import open_clip
import pytest
import torch

from mimbench.errors import WeightsUnavailableError
from mimbench.targets import TargetSpec, build_target
from mimbench.targets.clip import clip_target

CLIP_MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
CLIP_STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def vit_b16_file(tmp_path_factory):
    """A randomly initialised open_clip ViT-B-16 saved as a local state-dict file."""
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    path = tmp_path_factory.mktemp("clip") / "vit_b16_random.pt"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.mark.parametrize("layer", [3, -1])
@pytest.mark.parametrize("project", [False, True])
def test_clip_target_equals_open_clip_forward_intermediates(vit_b16_file, layer, project):
    model, path = vit_b16_file
    target = build_target("clip", model="ViT-B-16", weights=str(path), layer=layer, project=project)
    assert target.spec.grid == (14, 14) and target.spec.input_size == 224
    view = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.forward_intermediates(image=(view - CLIP_MEAN) / CLIP_STD, image_indices=[layer],
                                          intermediates_only=True, image_output_fmt="NLC")
        expected = out["image_intermediates"][0]  # [2, 196, 768]
        if project:
            expected = model.visual.ln_post(expected) @ model.visual.proj  # [2, 196, 512]
    got = target(view)
    assert got.shape == (2, 196, 512 if project else 768) and target.spec.dim == got.shape[-1]
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_clip_normalize_options(vit_b16_file):
    _, path = vit_b16_file
    view = torch.rand(1, 3, 224, 224)
    raw = build_target("clip", weights=str(path), layer=0)(view)
    l2 = build_target("clip", weights=str(path), layer=0, normalize="l2")(view)
    ln = build_target("clip", weights=str(path), layer=0, normalize="layernorm")(view)
    assert torch.allclose(l2, raw / raw.norm(dim=-1, keepdim=True), atol=1e-5)
    expected_ln = (raw - raw.mean(-1, keepdim=True)) / (raw.var(-1, unbiased=False, keepdim=True) + 1e-6).sqrt()
    assert torch.allclose(ln, expected_ln, atol=1e-4)


def save_resnet_clip(folder):
    """A tiny ResNet-tower CLIP (the tiny teacher's shape) with random weights, saved in
    open_clip's local-dir layout; returns the model."""
    model_cfg = {"embed_dim": 32, "vision_cfg": {"layers": [1, 1, 1, 1], "width": 16, "head_width": 16,
                                                 "image_size": 64},
                 "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
    torch.manual_seed(0)
    model = open_clip.CLIP(**model_cfg).eval()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return model


def test_clip_resnet_tower_gives_a_stage_as_grid(tmp_path):
    """A tiny ResNet-tower CLIP through open_clip's local-dir path: one stage's map is the grid."""
    model = save_resnet_clip(tmp_path)
    target = clip_target(model=f"local-dir:{tmp_path}", weights=None, layer=2)
    assert target.spec.grid == (8, 8) and target.spec.dim == 128
    view = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        fmap = model.visual.forward_intermediates((view - CLIP_MEAN) / CLIP_STD, indices=[2],
                                                  intermediates_only=True)["image_intermediates"][0]
    assert torch.allclose(target(view), fmap.flatten(2).transpose(1, 2), atol=1e-5)


@pytest.fixture(scope="module")
def dvae_file(tmp_path_factory):
    """A random dall_e Encoder, pickled whole as the package's encoder.pkl is."""
    import dall_e

    torch.manual_seed(0)
    encoder = dall_e.Encoder(n_hid=64, vocab_size=512)
    path = tmp_path_factory.mktemp("dvae") / "encoder.pkl"
    torch.save(encoder, path)
    return encoder, path


class _WritesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")  # unpickling this creates the file


def test_dvae_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    """encoder.pkl is unpickled with an allowlist: a pickle naming anything else (here
    open) is refused in one sentence, and what it names never runs."""
    marker = tmp_path / "ran"
    torch.save({"encoder": _WritesAFile(str(marker))}, tmp_path / "encoder.pkl")
    with pytest.raises(WeightsUnavailableError, match="names io.open .* unpickles nothing else"):
        build_target("dvae", weights=str(tmp_path / "encoder.pkl"))
    assert not marker.exists()


def test_dvae_target_equals_argmax_of_the_encoder(dvae_file):
    from dall_e import map_pixels

    encoder, path = dvae_file
    target = build_target("dvae", weights=str(path))
    assert target.spec.input_size == 112 and target.spec.grid == (14, 14)
    assert target.spec.kind == "tokens" and target.spec.dim == 512 and target.spec.loss == "ce"
    view = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = torch.argmax(encoder(map_pixels(view)), dim=1).flatten(1)  # [3, 196]
    got = target(view)
    assert got.dtype == torch.int64 and torch.equal(got, expected)


def test_timm_target_from_a_local_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=64).eval()
    save_file(net.state_dict(), tmp_path / "tiny.safetensors")
    target = build_target("timm", model="vit_tiny_patch16_224", weights=str(tmp_path / "tiny.safetensors"),
                          layer=1, input_size=64)
    view = torch.rand(2, 3, 64, 64)
    mean = torch.tensor(net.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(net.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = net.forward_intermediates((view - mean) / std, indices=[1], intermediates_only=True,
                                             output_fmt="NLC")[0]
    assert torch.allclose(target(view), expected, atol=1e-5)


def test_wrong_weights_file_names_the_mismatch(tmp_path):
    import timm
    from safetensors.torch import save_file

    save_file(timm.create_model("vit_tiny_patch16_224", num_classes=0).state_dict(), tmp_path / "t.safetensors")
    with pytest.raises(Exception, match="do not fit"):
        build_target("timm", model="vit_small_patch16_224", weights=str(tmp_path / "t.safetensors"))


@pytest.mark.parametrize("target, extra", [
    ("clip", ["--set", "target.model=ViT-B-16", "--set", "target.weights=openai"]),
    ("dvae", ["--set", "target.weights=official"]),
])
def test_hub_weights_offline_fail_with_the_remedy(cli, target, extra):
    result = cli("run", "--preset", "smoke", "--target", target, *extra,
                 env={"MIMBENCH_OFFLINE": "1", "HF_HUB_OFFLINE": "0"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "--set target.weights=/path/to/" in message and "download https://" in message


def test_unreachable_hub_fails_with_the_remedy_before_any_download(monkeypatch):
    """Without MIMBENCH_OFFLINE the host is probed once; a refused connection (simulated here,
    whatever this machine's network) is the remedy sentence, and no download is tried."""
    import socket

    import huggingface_hub

    from mimbench.errors import WeightsUnavailableError

    def refused(*args, **kwargs):
        raise ConnectionRefusedError("simulated")

    def no_download(*args, **kwargs):
        raise AssertionError("a download was tried")

    monkeypatch.delenv("MIMBENCH_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", refused)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", no_download)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)  # a user's cache
    with pytest.raises(WeightsUnavailableError, match="target.weights"):
        build_target("clip", model="ViT-B-16", weights="openai")


def test_clip_with_a_local_file_runs_offline(cli, tmp_path):
    """The same user, with the tiny ResNet CLIP saved locally, pre-trains with no network."""
    torch.manual_seed(0)
    cfg = {"embed_dim": 32, "vision_cfg": {"layers": [1, 1, 1, 1], "width": 16, "head_width": 16,
                                           "image_size": 32},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
    import json

    folder = tmp_path / "tinyclip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    torch.save(open_clip.CLIP(**cfg).state_dict(), folder / "open_clip_pytorch_model.bin")
    result = cli("run", "--preset", "smoke", "--target", "clip", "--set", f"target.model=local-dir:{folder}",
                 "--set", "target.weights=null", "--set", "target.layer=2", "--out", tmp_path / "run",
                 env={"MIMBENCH_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr


def test_target_spec_enforces_its_kinds_loss():
    """Token ids take cross entropy only (the default); features any regression loss but not ce."""
    assert TargetSpec("tokens", 512, (8, 8), 64).loss == "ce"
    assert TargetSpec("features", 64, (8, 8), 64).loss == "cosine"
    assert TargetSpec("features", 64, (8, 8), 64, loss="smooth_l1").loss == "smooth_l1"
    with pytest.raises(ValueError, match="for tokens must be ce, not 'mse'"):
        TargetSpec("tokens", 512, (8, 8), 64, loss="mse")
    with pytest.raises(ValueError, match="for features must be cosine or mse or smooth_l1, not 'ce'"):
        TargetSpec("features", 64, (8, 8), 64, loss="ce")
