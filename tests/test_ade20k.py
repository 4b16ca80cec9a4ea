import numpy as np
import pytest
from PIL import Image

from mimbench.data import build_dataset
from mimbench.errors import DataError


def make_ade(root, split="validation", n=3, size=(12, 8)):
    rng = np.random.default_rng(0)
    (root / "images" / split).mkdir(parents=True)
    (root / "annotations" / split).mkdir(parents=True)
    labels = []
    for i in range(n):
        name = f"ADE_val_{i:08d}"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
            root / "images" / split / f"{name}.jpg")
        label = rng.integers(0, 151, (size[1], size[0]), dtype=np.uint8)
        label[0, :3] = [0, 1, 150]
        Image.fromarray(label).save(root / "annotations" / split / f"{name}.png")
        labels.append(label)
    return labels


def test_reduce_zero_label_gives_150_classes(tmp_path):
    raw = make_ade(tmp_path)
    data = build_dataset("ade20k", root=str(tmp_path), split="validation")
    assert len(data) == 3 and data.num_classes == 150
    image, label = data[1]
    assert image.size == (12, 8) and label.shape == (8, 12)
    assert list(label[0, :3]) == [255, 0, 149]  # 0 -> ignored, 1 -> 0, 150 -> 149
    expected = np.where(raw[1] == 0, 255, raw[1].astype(np.int64) - 1)
    assert np.array_equal(label, expected)
    assert set(np.unique(label)) <= set(range(150)) | {255}


def test_missing_annotation_is_named(tmp_path):
    make_ade(tmp_path)
    (tmp_path / "annotations" / "validation" / "ADE_val_00000001.png").unlink()
    with pytest.raises(DataError, match="ADE_val_00000001.jpg' has no annotation"):
        build_dataset("ade20k", root=str(tmp_path), split="validation")
    with pytest.raises(DataError, match="training"):
        build_dataset("ade20k", root=str(tmp_path), split="training")


def test_training_augmentation_keeps_image_and_label_together():
    """An image whose colour spells its class: after rescale, crop, flip and padding (photometric
    distortion aside) each labelled pixel still shows its class's colour."""
    import torch

    from mimbench.data import seg_augment

    rng = np.random.default_rng(1)
    label = np.kron(rng.integers(0, 4, (6, 10)), np.ones((40, 40), dtype=np.int64))  # [240, 400]
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=np.uint8)
    image = Image.fromarray(palette[label])
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        big, small = seg_augment.random_rescale(image, label, (2048, 512), (0.5, 2.0), g)
        assert big.size[::-1] == small.shape and max(big.size) <= 2048 * 2 and min(big.size) <= 512 * 2
        crop, crop_label = seg_augment.random_crop(big, small, 128, 0.75, g)
        x = np.asarray(crop).astype(int)
        colours = palette[crop_label].astype(int)
        agree = (np.abs(x - colours).sum(-1) < 60).mean()
        assert agree > 0.95
    x, y = seg_augment.augment(image, label, 512, g, scale=(400, 120))  # smaller than the crop
    assert x.shape == (3, 512, 512) and y.shape == (512, 512)
    assert (y[:, -1] == 255).all() and (x[:, :, -1] == 0).all()  # padded right and bottom
    assert set(torch.unique(y).tolist()) <= {0, 1, 2, 3, 255}


def test_crop_avoids_a_dominant_class_when_it_can():
    """A 200-px label map, class 1 in its left 60 px: a 60-px crop is balanced enough (no class
    over 75 %) only when its left edge is in 16..44, a 21 % chance per draw; with 10 draws the
    search finds one about 9 times in 10 (mmseg's cat_max_ratio 0.75)."""
    import torch

    from mimbench.data import seg_augment

    label = np.zeros((200, 200), dtype=np.int64)
    label[:, :60] = 1
    image = Image.fromarray(np.zeros((200, 200, 3), dtype=np.uint8))
    g = torch.Generator().manual_seed(0)
    ratios = []
    for _ in range(50):
        _, window = seg_augment.random_crop(image, label, 60, 0.75, g)
        counts = np.bincount(window.ravel(), minlength=2)
        ratios.append(counts.max() / counts.sum())
    assert np.mean(np.array(ratios) < 0.75) > 0.8
    # one draw, no search: balanced about 1 time in 5
    plain = [np.bincount(seg_augment.random_crop(image, label, 60, 0.75, g, tries=1)[1].ravel()).max()
             / 3600 for _ in range(50)]
    assert np.mean(np.array(plain) < 0.75) < 0.45


@pytest.mark.parametrize("student", [
    (),  # the smoke ViT, absolute position embedding
    ("student.model=beit_base_patch16_224", "student.extra={use_abs_pos_emb: false, "
     "use_rel_pos_bias: false, use_shared_rel_pos_bias: true}", "student.pos_embed=learn",
     "student.layer_scale=0.1"),  # the paper's BEiT: a shared relative position bias
])
def test_segmentation_fine_tunes_on_crops_larger_than_the_student(tmp_path, student):
    """The paper path in miniature: a student built at 32 px trains on 48-px crops (BEiT: 224
    and 512) and is tested on keep-ratio images wider than a crop, window by window."""
    from mimbench import config as cfg
    from mimbench.evals import segmentation as seg
    from mimbench.evals.backbone import load_backbone
    from mimbench.model_source import ModelSource

    make_ade(tmp_path, "training", n=4, size=(48, 40))
    make_ade(tmp_path, "validation", n=2, size=(48, 40))
    c = cfg.resolve("smoke", target="pixels", overrides=(
        "segmentation.dataset=ade20k", f"segmentation.root={tmp_path}", "segmentation.augment=true",
        "segmentation.crop=48", "segmentation.stride=16", "segmentation.scale=[96, 48]",
        "segmentation.batch_size=2", "segmentation.steps=2", *student))
    assert c.student.img_size == 32
    encoder, name, _ = load_backbone(ModelSource.parse("timm:random"), c)
    result = seg.segmentation(encoder, c, name)
    assert len(result["per_class_iou"]) == 150 and np.isfinite(result["aAcc"])
    assert result["card"]["encoder_input"] == 48 and "sliding window 48/16" in result["card"]["inference"]
    # the test view keeps the aspect ratio: 48x40 -> short side 48 -> 58x48, two windows across
    image, _ = seg.segmentation_data(c, "val")[0]
    view = seg.test_image(image, c.segmentation)
    assert view.shape == (1, 3, 48, 58)
