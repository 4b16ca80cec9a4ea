"""Views are resized by torch's uint8 kernels (PIL's for Lanczos); they must give PIL's images
up to rounding."""

import numpy as np
import pytest
import torch
from PIL import Image

from mimbench.data.views import resize
from mimbench.data.world import World
from mimbench.targets.base import TargetSpec

PIL_FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
               "lanczos": Image.LANCZOS}


def crops(kind: str):
    """Random crops, of several shapes, as uint8 [H, W, 3], of world scenes (`flat`: the
    default world; `textured`: difficulty 2) or of uniform noise."""
    rng = np.random.default_rng(len(kind))
    if kind == "noise":
        sources = [rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)]
    else:
        world = World("val", length=3, difficulty=0 if kind == "flat" else 2, cache=False)
        sources = [np.array(world[i][0]) for i in range(3)]
    for pixels in sources:
        h, w = pixels.shape[:2]
        ch, cw = int(rng.integers(h // 2, h + 1)), int(rng.integers(w // 2, w + 1))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        yield pixels[top:top + ch, left:left + cw]


def differences(interpolation: str, size: int, kind: str) -> np.ndarray:
    """|ours - PIL's| in grey levels, over every crop."""
    diffs = []
    for crop in crops(kind):
        ours = resize(torch.from_numpy(crop)[None], size, interpolation)[0]
        pil = np.asarray(Image.fromarray(crop).resize((size, size), PIL_FILTERS[interpolation]))
        assert ours.dtype == torch.uint8 and ours.shape == (size, size, 3) and ours.is_contiguous()
        diffs.append(np.abs(ours.numpy().astype(int) - pil.astype(int)).ravel())
    return np.concatenate(diffs)


@pytest.mark.parametrize("interpolation", sorted(PIL_FILTERS))
@pytest.mark.parametrize("size", [16, 32, 112])
def test_resize_gives_pils_image_up_to_rounding(interpolation, size):
    flat, textured, noise = (differences(interpolation, size, kind)
                             for kind in ("flat", "textured", "noise"))
    if interpolation in ("nearest", "lanczos"):  # PIL's own code
        assert flat.max() == textured.max() == noise.max() == 0
    assert flat.max() <= 1 and flat.mean() < 0.01
    # PIL and torch round their intermediate (horizontal) pass differently, which shows on
    # high frequencies: a few pixels several levels apart (measured: at most 2 on textures,
    # 7 on noise)
    assert textured.max() <= 4 and textured.mean() < 0.1
    assert noise.max() <= 8 and noise.mean() < 0.5


def test_views_of_the_right_size_are_kept_as_they_are():
    world = World("val", length=2, cache=False)
    views = torch.stack([torch.from_numpy(np.array(world[i][0])) for i in range(2)])  # [2, 64, 64, 3]
    assert torch.equal(resize(views, 64, "bicubic"), views)
    transposed = views.transpose(1, 2)  # the right size, not contiguous
    kept = resize(transposed, 64, "lanczos")
    assert torch.equal(kept, transposed) and kept.is_contiguous()


def test_a_batch_is_resized_as_its_images_are_one_by_one():
    rng = np.random.default_rng(0)
    views = torch.from_numpy(rng.integers(0, 256, (5, 48, 40, 3), dtype=np.uint8))
    for interpolation in sorted(PIL_FILTERS):
        together = resize(views, 24, interpolation)
        alone = torch.cat([resize(v[None], 24, interpolation) for v in views])
        assert torch.equal(together, alone), interpolation


def test_a_spec_with_an_unknown_interpolation_is_refused():
    with pytest.raises(ValueError, match="interpolation must be one of"):
        TargetSpec(kind="features", dim=8, grid=(4, 4), input_size=32, interpolation="area")


def test_pillow_posterizes_to_zero_bits_as_timms_randaugment_needs():
    """Fine-tuning's RandAugment (rand-m9-mstd0.5-inc1) posterizes to 0 bits when its magnitude
    reaches 10: a black image in TF's and timm's recipe. Pillow 13 refuses it (pyproject pins
    pillow<13)."""
    import numpy as np
    from PIL import Image, ImageOps

    image = Image.fromarray(np.full((4, 4, 3), 200, dtype=np.uint8))
    assert np.asarray(ImageOps.posterize(image, 0)).max() == 0


def test_device_decoding_takes_the_cpu_paths_samples_to_within_a_few_levels(tmp_path):
    """data.decode=device: the same crop, flip, jitter factors and mask as the CPU path for each
    (epoch, index); its pixels (torch's decode, jitter and resize instead of PIL's) within a
    few levels. Run here on the CPU; on a GPU the same code decodes there."""
    import numpy as np
    import torch
    from PIL import Image

    from mimbench.data.decode import pipeline
    from mimbench.data.folder import FolderDataset
    from mimbench.data.views import MIMViews
    from mimbench.masking import BlockMasking

    rng = np.random.default_rng(0)
    (tmp_path / "a").mkdir()
    for i in range(6):
        h, w = (150, 200) if i % 2 else (200, 150)
        coarse = rng.integers(0, 256, (h // 10, w // 10, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((w, h), Image.BILINEAR).save(tmp_path / "a" / f"{i}.jpg", quality=95)
    images = FolderDataset(str(tmp_path))
    views = MIMViews(32, 48, "bicubic", BlockMasking((4, 4), 6, 2), (0.08, 1.0), hflip=True, jitter=0.4)
    keys = [(e, i) for e in (0, 1) for i in range(6)]
    batches = {}
    for decode in ("workers", "device"):
        dataset, collate, prepare = pipeline(decode, images, views, seed=3)
        batches[decode] = prepare(collate([dataset[k] for k in keys]), torch.device("cpu"))
    cpu, device = batches["workers"], batches["device"]
    assert torch.equal(cpu["mask"], device["mask"]) and torch.equal(cpu["index"], device["index"])
    for view in ("student", "teacher"):
        assert cpu[view].shape == device[view].shape and device[view].dtype == torch.uint8
        diff = (cpu[view].float() - device[view].float()).abs()
        assert diff.mean() < 2.0, (view, diff.mean())  # levels of 255
        assert diff.flatten(1).mean(1).max() < 4.0  # no sample cropped or flipped elsewhere


def test_pretraining_reads_a_jpeg_folder_decoded_on_the_device_through_workers(tmp_path):
    """data.decode=device end to end, two DataLoader workers handing over the batch's bytes;
    a PNG in such a folder is refused in one sentence."""
    import json

    import numpy as np
    from PIL import Image

    from tests.conftest import run_cli

    rng = np.random.default_rng(0)
    (tmp_path / "jpegs" / "a").mkdir(parents=True)
    for i in range(32):
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(tmp_path / "jpegs" / "a" / f"{i}.jpg")
    args = ["pretrain", "--preset", "smoke", "--target", "pixels", "--set", "data.name=folder",
            "--set", f"data.root={tmp_path / 'jpegs'}", "--set", "data.decode=device",
            "--set", "data.num_workers=2"]
    result = run_cli(*args, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run" / "results.json").read_text())["pretrain"]["steps"] == 6
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "jpegs" / "a" / "0.png")
    refused = run_cli(*args, "--out", tmp_path / "png")
    assert refused.returncode == 2 and "decodes JPEG files only" in refused.stderr
    assert "Traceback" not in refused.stderr  # raised in a worker, told in one sentence
