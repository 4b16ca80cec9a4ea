import numpy as np
import pytest

from mimbench.evals.metrics import segmentation_metrics


def straightforward_miou(preds, labels, num_classes, ignore=255):
    """Per class: count pixels of the whole dataset that are in both / either; loops, no matrices."""
    inter = [0] * num_classes
    union = [0] * num_classes
    correct = valid = 0
    for pred, label in zip(preds, labels):
        for p, t in zip(pred.ravel().tolist(), label.ravel().tolist()):
            if t == ignore:
                continue
            valid += 1
            correct += p == t
            for c in range(num_classes):
                inter[c] += (p == c) and (t == c)
                union[c] += (p == c) or (t == c)
    ious = [inter[c] / union[c] if union[c] else float("nan") for c in range(num_classes)]
    present = [v for v in ious if v == v]
    return sum(present) / len(present) * 100, correct / valid * 100, ious


def test_miou_agrees_with_a_straightforward_count():
    rng = np.random.default_rng(0)
    num_classes = 6
    preds, labels = [], []
    for _ in range(5):
        label = rng.integers(0, 4, (9, 11))  # classes 4 and 5 never occur in labels...
        label[rng.random((9, 11)) < 0.2] = 255  # ...and some pixels are ignored
        pred = rng.integers(0, 5, (9, 11))  # class 4 is predicted (union > 0), 5 never appears
        preds.append(pred)
        labels.append(label)
    got = segmentation_metrics(preds, labels, num_classes)
    miou, acc, ious = straightforward_miou(preds, labels, num_classes)
    assert got["mIoU"] == pytest.approx(miou)
    assert got["aAcc"] == pytest.approx(acc)
    assert np.isnan(got["per_class_iou"][5]) and got["per_class_iou"][4] == 0.0
    assert np.allclose([v for v in got["per_class_iou"][:5]], [100 * v for v in ious[:5]])


def test_perfect_prediction_and_ignored_pixels():
    label = np.array([[0, 1], [255, 2]])
    pred = np.array([[0, 1], [7, 2]])  # the prediction under an ignored pixel does not count
    got = segmentation_metrics([pred], [label], 3)
    assert got["mIoU"] == 100.0 and got["aAcc"] == 100.0


def test_object_miou_leaves_the_background_out():
    """Background right everywhere, objects half right: the object mean sees only the objects."""
    label = np.array([[0, 0, 0, 0], [0, 1, 1, 0], [0, 2, 2, 0], [0, 0, 0, 0]])
    pred = label.copy()
    pred[1, 2] = 2  # one pixel of class 1 called 2
    got = segmentation_metrics([pred], [label], 3, background=0)
    iou_1, iou_2 = 1 / 2, 2 / 3  # class 1: I 1, U 2; class 2: I 2, U 3
    assert got["mIoU_objects"] == pytest.approx(100 * (iou_1 + iou_2) / 2)
    assert got["mIoU"] == pytest.approx(100 * (1 + iou_1 + iou_2) / 3)
    assert "mIoU_objects" not in segmentation_metrics([pred], [label], 3)
