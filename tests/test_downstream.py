"""Canvas data, segmentation / detection metrics and the downstream recipes."""

import os
import subprocess
import sys

import numpy as np
import pytest

from keras_conmim.data.canvas import make_canvases
from keras_conmim.downstream_metrics import box_iou, coco_map, mean_iou
from conftest import ROOT, tiny_vit, uint8_images

BACKEND_ENV = os.environ.get("KERAS_BACKEND", "jax")


def test_canvases_hold_items_with_matching_masks_and_boxes():
    items = uint8_images(20, size=16)
    labels = np.arange(20) % 4
    data = make_canvases(items, labels, 30, canvas_size=40, max_items=3, seed=0)
    assert data["images"].shape == (30, 40, 40, 1) and data["masks"].shape == (30, 40, 40)
    counts = (data["classes"] >= 0).sum(1)
    assert counts.min() >= 1 and counts.max() <= 3 and counts.mean() > 1.5
    for i in range(30):
        for box, k in zip(data["boxes"][i], data["classes"][i]):
            if k < 0:
                np.testing.assert_array_equal(box, -1)
                continue
            y0, x0, y1, x1 = box.astype(int)
            inside = data["masks"][i, y0:y1, x0:x1] == k + 1
            assert inside.any() and inside[0].any() and inside[-1].any()  # tight box
        # every labelled pixel lies in a box of its class; items never overlap
        covered = np.zeros((40, 40), int)
        for box, k in zip(data["boxes"][i], data["classes"][i]):
            if k >= 0:
                y0, x0, y1, x1 = box.astype(int)
                covered[y0:y1, x0:x1] += 1
        assert covered.max() <= 1 and (covered[data["masks"][i] > 0] == 1).all()
    again = make_canvases(items, labels, 30, canvas_size=40, max_items=3, seed=0)
    np.testing.assert_array_equal(again["images"], data["images"])
    with pytest.raises(ValueError, match="smaller than the items"):
        make_canvases(items, labels, 1, canvas_size=8)


def test_mean_iou_by_hand():
    true = np.array([[0, 0, 1, 1], [0, 2, 2, 1]])
    pred = np.array([[0, 1, 1, 1], [0, 2, 2, 2]])
    # class 0: inter 2, union 3; class 1: inter 2, union 4; class 2: inter 2, union 3
    assert mean_iou(pred, true, 3) == pytest.approx((2 / 3 + 2 / 4 + 2 / 3) / 3)
    assert mean_iou(true, true, 5) == 1.0  # absent classes do not count


def test_coco_map_perfect_partial_and_empty():
    boxes = np.array([[[0, 0, 10, 10], [20, 20, 30, 40]], [[5, 5, 15, 15], [-1, -1, -1, -1]]],
                     "float32")
    classes = np.array([[0, 1], [0, -1]])
    scores = np.array([[0.9, 0.8], [0.7, -1.0]])
    assert coco_map(boxes, scores, classes, boxes, classes) == {"map": 1.0, "ap50": 1.0}
    # shifted boxes: IoU 0.6 with the truth counts at thresholds 0.5..0.6 only
    shifted = boxes.copy()
    shifted[..., [1, 3]] += np.where(classes[..., None] >= 0, 2.5, 0)
    assert box_iou(shifted[0, :1], boxes[0, :1])[0, 0] == pytest.approx(0.6)
    result = coco_map(shifted, scores, classes, boxes, classes)
    assert result["ap50"] == 1.0 and 0.1 < result["map"] < 0.5
    nothing = coco_map(np.zeros((2, 1, 4)), np.full((2, 1), -1.0), np.full((2, 1), -1),
                       boxes, classes)
    assert nothing == {"map": 0.0, "ap50": 0.0}
    # a false positive ranked first halves precision at the first recall point
    fp = np.concatenate([np.array([[[50, 50, 60, 60]], [[50, 50, 60, 60]]], "float32"), boxes], 1)
    fp_scores = np.concatenate([np.array([[0.99], [0.99]]), scores], 1)
    fp_classes = np.concatenate([np.array([[0], [0]]), classes], 1)
    assert coco_map(fp, fp_scores, fp_classes, boxes, classes)["map"] < 1.0


# Both inits share one code path: the detection run checks only the pretrained
# one (CI time); the segmentation run checks both.
@pytest.mark.parametrize("recipe,extra,inits", [
    ("segment.py", ["--head", "segformer"], ("pretrained", "random")),
    ("detect.py", ["--init", "pretrained"], ("pretrained",))])
def test_downstream_recipes_run(tmp_path, recipe, extra, inits):
    pytest.importorskip("keras_hub")
    from keras_conmim.atomic import save_atomic

    encoder = save_atomic(tiny_vit(), os.path.join(tmp_path, "vit.keras"))
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "recipes", recipe), "--encoder", encoder,
         "--backend", BACKEND_ENV, "--train-canvases", "8", "--test-canvases", "4",
         "--epochs", "1", "--batch-size", "4", "--canvas-size", "32", *extra],
        capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("done: ") and all(init in last for init in inits)
    if BACKEND_ENV != "torch":
        return  # a flag check: the backend does not matter (each command imports Keras)
    bad = subprocess.run(
        [sys.executable, os.path.join(ROOT, "recipes", recipe), "--encoder", encoder,
         "--init", "imagenet"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--init" in bad.stderr
