"""Instance segmentation (keras_conmim.InstanceSegmenter) and the UperNet head
(keras_conmim.UperNetSegmenter): targets, Fast NMS, one fit step that changes
the weights, `.keras` round trips, COCO mask AP equal to pycocotools' segm
evaluation, and recipes/instance_segment.py and segment.py --head upernet
end to end (in-process), with the instance SavedModel equal to the model."""

import json
import os

import numpy as np
import pytest

from conftest import tiny_vit
from model_checks import check_fit_changes_weights

BACKEND = os.environ.get("KERAS_BACKEND", "jax")
SIZE = 32


def canvases(count=8, seed=0):
    from keras_conmim.data.canvas import make_canvases

    rng = np.random.default_rng(seed)
    items = np.zeros((20, 12, 12, 1), np.uint8)
    items[:, 2:10, 3:9] = rng.integers(60, 255, (20, 8, 6, 1))
    return make_canvases(items, np.arange(20) % 3, count, SIZE, 2, seed=seed)


def pyramid_backbone():
    pytest.importorskip("keras_hub")
    from keras_conmim.integrations.kerashub import ViTPyramidBackbone

    return ViTPyramidBackbone(tiny_vit(), image_shape=(SIZE, SIZE, 1), min_level=2, max_level=4)


def targets(c):
    return {k: c[k] for k in ("boxes", "classes", "instances")}


def test_canvases_carry_an_instance_map_that_matches_masks_and_boxes():
    c = canvases(12)
    for i in range(12):
        for g, (box, k) in enumerate(zip(c["boxes"][i], c["classes"][i])):
            mine = c["instances"][i] == g + 1
            if k < 0:
                assert not mine.any()
                continue
            y0, x0, y1, x1 = box.astype(int)
            ys, xs = np.nonzero(mine)
            assert (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) == (y0, x0, y1, x1)
            assert (c["masks"][i][mine] == k + 1).all()
        assert ((c["instances"][i] > 0) == (c["masks"][i] > 0)).all()


def test_targets_every_object_gets_a_location_and_the_smaller_wins():
    import keras

    from keras_conmim.downstream.instance import InstanceSegmenter

    model = InstanceSegmenter(pyramid_backbone(), num_classes=3, width=16, num_prototypes=4)
    boxes = np.array([[[0, 0, 6, 6], [8, 8, 30, 30], [-1, -1, -1, -1]],
                      [[4, 4, 28, 28], [12, 12, 16, 16], [-1, -1, -1, -1]]], "float32")
    classes = np.array([[0, 1, -1], [2, 0, -1]], "int32")
    positive, which = (keras.ops.convert_to_numpy(t) for t in model.assign(boxes, classes))
    for b in range(2):
        taken = set(which[b][positive[b]].tolist())
        assert taken == {0, 1}, taken  # both objects, never the padding row
    # where both objects of image 1 claim a location, the smaller (row 1) takes it
    centres = model._centres
    nearest_small = np.argmin(((centres - 14) ** 2).sum(-1) + 1e9 * (model._level_index > 0))
    assert positive[1][nearest_small] and which[1][nearest_small] == 1


def test_fast_nms_drops_overlaps_of_a_class_only():
    import keras

    from keras_conmim.downstream.instance import fast_nms

    boxes = np.array([[[0, 0, 10, 10], [0, 1, 10, 11], [0, 0, 10, 10], [20, 20, 30, 30]]],
                     "float32")
    scores = np.array([[0.9, 0.8, 0.7, 0.6]], "float32")
    classes = np.array([[0, 0, 1, 0]], "int32")
    keep = keras.ops.convert_to_numpy(fast_nms(boxes, scores, classes, 0.5))
    assert keep.tolist() == [[True, False, True, True]]


def test_instance_segmenter_fits_predicts_and_round_trips(tmp_path):
    import keras

    import keras_conmim as kc

    c = canvases(8)
    model = kc.InstanceSegmenter(pyramid_backbone(), num_classes=3, width=16, num_prototypes=4,
                                 max_detections=5)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    frozen = check_fit_changes_weights(model, c["images"], targets(c), batch_size=4)
    # every weight (backbone, FPN, heads, prototypes) learns but pre-training's mask token
    assert [p for p in frozen if "mask_token" not in p] == []
    out = model.predict(c["images"], batch_size=4, verbose=0)
    out = {k: keras.ops.convert_to_numpy(v) for k, v in out.items()}
    assert out["boxes"].shape == (8, 5, 4) and out["masks"].shape == (8, 5, SIZE, SIZE)
    assert out["masks"].dtype == np.uint8 and set(np.unique(out["masks"])) <= {0, 1}
    n = out["num_detections"]
    for i in range(8):
        assert (out["classes"][i, n[i]:] == -1).all() and (out["scores"][i, n[i]:] == -1).all()
        assert (out["masks"][i, n[i]:] == 0).all()
        y0, x0, y1, x1 = out["boxes"][i, 0]
        ys, xs = np.nonzero(out["masks"][i, 0])
        if n[i] and len(ys):  # a mask stays inside its box
            assert ys.min() + 0.5 >= y0 and ys.max() + 0.5 < y1 + 1e-4
    path = str(tmp_path / "instance.keras")
    model.save(path)
    again = keras.saving.load_model(path)
    assert isinstance(again, kc.InstanceSegmenter) and again.max_detections == 5
    reloaded = {k: keras.ops.convert_to_numpy(v)
                for k, v in again.predict(c["images"], batch_size=4, verbose=0).items()}
    np.testing.assert_array_equal(reloaded["num_detections"], n)
    np.testing.assert_allclose(reloaded["scores"], out["scores"], atol=1e-5)


def test_upernet_fits_and_round_trips(tmp_path):
    import keras

    import keras_conmim as kc

    c = canvases(8)
    model = kc.UperNetSegmenter(pyramid_backbone(), num_classes=4, width=16)
    assert model.output_shape == (None, SIZE, SIZE, 4)
    assert [l.name for l in model.layers if l.name.startswith("ppm_pool")] == [
        "ppm_pool1", "ppm_pool2"]  # P4 of 32 px is 2 x 2: bins 3 and 6 do not fit
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    still = check_fit_changes_weights(model, c["images"], c["masks"][..., None], batch_size=4)
    assert not [p for p in still if "classifier" in p], still
    path = str(tmp_path / "upernet.keras")
    model.save(path)
    again = keras.saving.load_model(path)
    np.testing.assert_allclose(again.predict(c["images"], verbose=0),
                               model.predict(c["images"], verbose=0), atol=1e-4)


def test_mask_map_equals_pycocotools_segm():
    """Random instance maps and predicted masks (some matching, some shifted,
    some false), crowd regions included: coco_mask_map equals COCOeval segm
    AP and AP50."""
    if BACKEND != "jax":
        pytest.skip("numpy only: one backend")
    mask_api = pytest.importorskip("pycocotools.mask")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from keras_conmim.downstream.metrics import coco_mask_map

    rng = np.random.default_rng(0)
    n, size, rows, dets = 12, 24, 3, 5
    instances = np.zeros((n, size, size), np.int32)
    classes = np.full((n, rows), -1)
    crowd = np.zeros((n, 1, size, size), bool)
    crowd_classes = np.full((n, 1), -1)
    pred = np.zeros((n, dets, size, size), np.uint8)
    scores = np.full((n, dets), -1.0)
    pred_classes = np.full((n, dets), -1)
    for i in range(n):
        for g in range(rng.integers(1, rows + 1)):
            y, x = rng.integers(0, size - 6, 2)
            h, w = rng.integers(3, 7, 2)
            region = instances[i, y:y + h, x:x + w]
            region[...] = np.where(rng.random((h, w)) < 0.85, g + 1, region)
            classes[i, g] = rng.integers(0, 2)
        if i % 4 == 0:  # a crowd region of class 0 in a corner
            crowd[i, 0, -6:, -6:] = True
            crowd_classes[i, 0] = 0
            instances[i][crowd[i, 0] & (instances[i] == 0)] = 255
        for d in range(rng.integers(0, dets + 1)):
            g = rng.integers(0, rows)
            base = instances[i] == g + 1 if classes[i, g] >= 0 else rng.random((size, size)) < 0.05
            shifted = np.roll(base, rng.integers(-1, 2, 2) * (rng.random() < 0.5), axis=(0, 1))
            pred[i, d] = shifted & (rng.random((size, size)) < 0.95)
            if i % 4 == 0 and d == 0:
                pred[i, d] = 0
                pred[i, d, -5:, -5:] = 1  # inside the crowd region
            scores[i, d] = np.round(rng.random(), 3)
            pred_classes[i, d] = classes[i, g] if classes[i, g] >= 0 and rng.random() < 0.9 \
                else rng.integers(0, 2)

    def rle(m):
        r = mask_api.encode(np.asfortranarray(m.astype(np.uint8)))
        r["counts"] = r["counts"].decode()
        return r

    images, anns, results = [], [], []
    for i in range(n):
        images.append({"id": i + 1, "height": size, "width": size})
        for g in range(rows):
            m = instances[i] == g + 1
            if classes[i, g] >= 0 and m.any():
                anns.append({"id": len(anns) + 1, "image_id": i + 1,
                             "category_id": int(classes[i, g]) + 1, "iscrowd": 0,
                             "segmentation": rle(m), "area": float(m.sum()),
                             "bbox": list(mask_api.toBbox(rle(m)))})
            elif classes[i, g] >= 0:
                classes[i, g] = -1  # an object with no pixel left is no object
        if crowd_classes[i, 0] >= 0:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1,
                         "iscrowd": 1, "segmentation": rle(crowd[i, 0]),
                         "area": float(crowd[i, 0].sum()), "bbox": list(mask_api.toBbox(
                             rle(crowd[i, 0])))})
        for d in range(dets):
            if pred_classes[i, d] >= 0:
                results.append({"image_id": i + 1, "category_id": int(pred_classes[i, d]) + 1,
                                "segmentation": rle(pred[i, d]), "score": float(scores[i, d])})
    truth = COCO()
    truth.dataset = {"images": images, "annotations": anns,
                     "categories": [{"id": 1}, {"id": 2}]}
    truth.createIndex()
    evaluation = COCOeval(truth, truth.loadRes(results), "segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    ours = coco_mask_map(pred, scores, pred_classes, instances, classes, crowd, crowd_classes)
    assert ours["map"] == pytest.approx(evaluation.stats[0], abs=1e-9)
    assert ours["ap50"] == pytest.approx(evaluation.stats[1], abs=1e-9)
    assert 0.05 < ours["map"] < 0.95  # neither empty nor trivial


def test_instance_recipe_runs_resumes_and_exports(tmp_path):
    """recipes/instance_segment.py end to end: results.json with mask and box
    mAP, the run folder's files, predictions.png; on TensorFlow the
    SavedModel (uint8 in; boxes, classes, scores, masks out) equals the
    reloaded model."""
    pytest.importorskip("keras_hub")
    import keras

    import instance_segment
    from keras_conmim.atomic import save_atomic

    encoder = save_atomic(tiny_vit(), str(tmp_path / "vit.keras"))
    out = tmp_path / "run"
    export = ["--export", "saved_model"] if BACKEND == "tensorflow" else []
    result = instance_segment.main([
        "--encoder", encoder, "--backend", BACKEND, "--train-canvases", "8", "--val-canvases",
        "4", "--test-canvases", "4", "--steps", "2", "--batch-size", "4", "--canvas-size", "32",
        "--grid", "2", "--checkpoint-every", "2", "--output", str(out), *export])
    assert {"mask_map", "mask_ap50", "box_map", "box_ap50"} == set(result["test"])
    assert result["train_canvases"] == 8 and result["test_canvases"] == 4
    names = set(os.listdir(out))
    assert {"config.json", "results.json", "predictions.png", "model.keras", "log.csv"} <= names
    assert json.loads((out / "results.json").read_text())["test"] == result["test"]
    assert json.loads((out / "config.json").read_text())["command"][0] == \
        "recipes/instance_segment.py"
    import keras_conmim  # noqa: F401  (registers what model.keras holds)
    import keras_conmim.integrations.kerashub  # noqa: F401

    model = keras.saving.load_model(str(out / "model.keras"))
    if not export:
        return
    import tensorflow as tf

    served = tf.saved_model.load(str(out / "serving"))
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 1)).astype("uint8")
    got = {k: v.numpy() for k, v in served.serve(tf.constant(images)).items()}
    want = {k: keras.ops.convert_to_numpy(v)
            for k, v in model.predict(images.astype("float32"), verbose=0).items()}
    np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
    np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1e-3, rtol=1e-4)
    np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-5)
    np.testing.assert_array_equal(got["classes"], want["classes"])
    assert (got["masks"] != want["masks"]).mean() < 1e-3  # pixels at 0.5 may round apart


def test_segment_recipe_with_the_upernet_head(tmp_path):
    if BACKEND != "torch":
        pytest.skip("the recipe's loop is the same on every backend; the head runs on all "
                    "three in test_upernet_fits_and_round_trips")
    pytest.importorskip("keras_hub")
    import segment
    from keras_conmim.atomic import save_atomic

    encoder = save_atomic(tiny_vit(), str(tmp_path / "vit.keras"))
    result = segment.main([
        "--head", "upernet", "--encoder", encoder, "--backend", BACKEND, "--train-canvases",
        "8", "--val-canvases", "4", "--test-canvases", "4", "--steps", "2", "--batch-size", "4",
        "--canvas-size", "32", "--grid", "0", "--output", str(tmp_path / "run")])
    assert result["head"] == "upernet" and set(result["test"]) == {"miou", "pixel_accuracy"}
