"""Canvas data, segmentation / detection metrics and the downstream recipes."""

import os
import subprocess

import numpy as np
import pytest

from keras_conmim.data.canvas import make_canvases
from keras_conmim.downstream.metrics import box_iou, coco_map, mean_iou
from conftest import recipe_command, run_recipe, tiny_vit, uint8_images

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


TINY_RUN = ["--train-canvases", "8", "--val-canvases", "4", "--test-canvases", "4", "--steps", "2",
            "--batch-size", "4", "--canvas-size", "32", "--grid", "2"]


def tiny_run(recipe, encoder, output, *extra):
    done = run_recipe(recipe[:-3], "--encoder", encoder, *TINY_RUN, "--output", output, *extra)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


@pytest.mark.parametrize("recipe,extra,every_backend", [
    ("segment.py", [], True), ("detect.py", ["--head", "retinanet"], True),
    ("detect.py", [], False), ("segment.py", ["--init", "resnet18"], False),
    ("detect.py", ["--init", "resnet18"], False)])
def test_downstream_recipes_run(tmp_path, recipe, extra, every_backend):
    """A run folder holds the run: config.json (values and sources),
    results.json (validation and test scores), predictions.png, model.keras,
    no checkpoints left; a SavedModel that takes uint8 images and equals the
    Keras model (JAX / TensorFlow). A second run in the folder moves the
    first aside."""
    pytest.importorskip("keras_hub")
    if not every_backend and BACKEND_ENV != "jax":
        pytest.skip("other heads and starts: one backend is enough (the model code is KerasHub's)")
    import json

    from keras_conmim.atomic import save_atomic

    encoder = save_atomic(tiny_vit(), os.path.join(tmp_path, "vit.keras"))
    out = tmp_path / "run"
    can_export = BACKEND_ENV == "tensorflow" or (BACKEND_ENV == "jax" and recipe == "segment.py")
    export = ["--export", "saved_model"] if can_export and every_backend else []
    done = tiny_run(recipe, encoder, out, *extra, *export)
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("done: ") and "test" in last, last
    names = set(os.listdir(out))
    assert {"config.json", "results.json", "predictions.png", "model.keras",
            "log.csv"} <= names and "checkpoints" not in names, names
    result = json.loads((out / "results.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["steps"] == 2 and config["recipe_sources"]["steps"] == "flag"
    assert result["steps"] == 2 and set(result["test"]) == (
        {"miou", "pixel_accuracy"} if recipe == "segment.py" else {"map", "ap50"})
    if export:
        check_serving(recipe, out)
    if not every_backend or BACKEND_ENV != "torch":
        return  # the run folder's bookkeeping is the same on every backend
    again = tiny_run(recipe, encoder, out)
    assert "moved them to" in again.stdout and os.listdir(out / "previous_runs")


def check_serving(recipe, out):
    """The SavedModel's serve(uint8) equals the Keras model on the same images."""
    tf = pytest.importorskip("tensorflow")
    import keras

    import keras_conmim.integrations.kerashub  # noqa: F401  (registers the backbone model.keras holds)

    model = keras.saving.load_model(str(out / "model.keras"))
    served = tf.saved_model.load(str(out / "serving"))
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 1)).astype("uint8")
    if recipe == "segment.py":
        got = {k: v.numpy() for k, v in served.serve(tf.constant(images)).items()}
        logits = model.predict(images.astype("float32"), verbose=0)
        top2 = np.sort(logits, -1)[..., -2:]
        clear = top2[..., 1] - top2[..., 0] > 1e-3  # argmax of a near-tie may differ in rounding
        assert clear.mean() > 0.5
        np.testing.assert_array_equal(got["masks"][clear], np.argmax(logits, -1)[clear])
        return
    # The detector's serving function takes one image at a time (a fixed batch: KerasHub's
    # non-maximum suppression sizes its outputs by the static batch size).
    outs = [served.serve(tf.constant(images[i:i + 1])) for i in range(len(images))]
    got = {k: np.concatenate([o[k].numpy() for o in outs]) for k in outs[0]}
    want = model.predict(images.astype("float32"), verbose=0)
    want = {k: keras.ops.convert_to_numpy(v) for k, v in want.items()}
    n = want["num_detections"]
    np.testing.assert_array_equal(got["num_detections"], n)
    for i in range(len(images)):
        np.testing.assert_allclose(got["boxes"][i, :n[i]], want["boxes"][i, :n[i]], atol=1e-4,
                                   rtol=1e-4)  # boxes of an untrained head reach 1e3-1e4 px
        np.testing.assert_allclose(got["scores"][i, :n[i]], want["confidence"][i, :n[i]],
                                   atol=1e-5)
        np.testing.assert_array_equal(got["classes"][i, :n[i]], want["labels"][i, :n[i]])
        assert (got["classes"][i, n[i]:] == -1).all()


def test_downstream_run_resumes_after_a_kill(tmp_path):
    """Killed after a checkpoint, the same command resumes at that step and
    ends with the steps it was sized for, its weights equal to an uninterrupted
    run's (the same batches in the same order, the same random state); other
    settings are refused."""
    pytest.importorskip("keras_hub")
    if BACKEND_ENV != "torch":
        pytest.skip("the run engine is backend-independent; torch starts fastest")
    import json
    import time

    from keras_conmim.atomic import save_atomic

    encoder = save_atomic(tiny_vit(), os.path.join(tmp_path, "vit.keras"))
    out = tmp_path / "run"
    settings = ["--encoder", encoder, "--train-canvases", "8", "--val-canvases", "4",
                "--test-canvases", "4", "--steps", "60", "--batch-size", "4", "--canvas-size", "32",
                "--checkpoint-every", "2", "--grid", "0"]
    proc = recipe_command("segment", *settings, "--output", out, start=True, log=subprocess.DEVNULL)
    deadline = time.time() + 1200  # a loaded CI machine starts Keras slowly
    while time.time() < deadline and proc.poll() is None:
        if (out / "checkpoints").is_dir() and any(
                n.endswith(".keras") and "partial" not in n for n in os.listdir(out / "checkpoints")):
            break
        time.sleep(0.02)
    ended = proc.poll() is not None
    proc.kill()
    proc.wait()
    assert not ended, "the run ended before it could be killed"
    assert list((out / "checkpoints").iterdir()), "no checkpoint within the deadline"
    # what follows the kill needs no process of its own
    refused = run_recipe("segment", *settings, "--output", out, "--lr", "0.5")
    assert refused.returncode == 2 and "lr" in refused.stderr and "--no-resume" in refused.stderr
    done = run_recipe("segment", *settings, "--output", out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout
    result = json.loads((out / "results.json").read_text())
    assert result["resumed_at_step"] > 0 and result["steps"] == 60
    epochs = [int(line.split(",")[0]) for line in (out / "log.csv").read_text().splitlines()[1:]]
    assert epochs == sorted(set(epochs)) and epochs[-1] == 29  # no round logged twice
    history = json.loads((out / "config.json").read_text())["history"]
    assert [h["event"] for h in history] == ["start", "resume"]
    whole = tmp_path / "whole"
    done = run_recipe("segment", *settings, "--output", whole)
    assert done.returncode == 0, done.stderr[-3000:]
    import keras

    import keras_conmim.integrations.kerashub  # noqa: F401  (registers the backbone model.keras holds)

    resumed = keras.saving.load_model(str(out / "model.keras")).get_weights()
    uninterrupted = keras.saving.load_model(str(whole / "model.keras")).get_weights()
    for a, b in zip(resumed, uninterrupted):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_batches_resume_exactly_and_flip_boxes_with_masks():
    """Step k's batch is the same whatever step a run started at; a flipped
    canvas's boxes are the tight boxes of its flipped masks."""
    from keras_conmim.runs.downstream import DownstreamRecipe, batch_at, canvas_batches

    items = uint8_images(40, size=16, seed=1)
    canvases = make_canvases(items, np.arange(40) % 10, 12, canvas_size=32, max_items=2)
    recipe = DownstreamRecipe(batch_size=5, flip=0.5, canvas_size=32)
    whole = canvas_batches(canvases, "detect", recipe, seed=3, first_step=0, steps_per_epoch=4)
    later = canvas_batches(canvases, "detect", recipe, seed=3, first_step=4, steps_per_epoch=4)
    assert whole.num_batches is None  # endless: Keras neither shuffles nor restarts it
    for i in range(4):
        a, b = whole[4 + i], later[i]
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1]["boxes"], b[1]["boxes"])
    for step in range(8):
        images, target = batch_at(canvases, "detect", recipe, 3, step)
        _, masks = batch_at(canvases, "segment", recipe, 3, step)
        for img, mask, boxes, labels in zip(images, masks[..., 0], target["boxes"],
                                            target["labels"]):
            for box, label in zip(boxes, labels):
                if label < 0:
                    continue
                y0, x0, y1, x1 = box.astype(int)
                ys, xs = np.nonzero(mask[y0:y1, x0:x1] == label + 1)
                assert ys.min() == 0 and xs.min() == 0
                assert ys.max() == y1 - y0 - 1 and xs.max() == x1 - x0 - 1
        _, objects = batch_at(canvases, "instance", recipe, 3, step)
        np.testing.assert_array_equal(objects["boxes"], target["boxes"])
        for inst, boxes, labels in zip(objects["instances"], objects["boxes"], objects["classes"]):
            for g, (box, label) in enumerate(zip(boxes, labels)):
                if label >= 0:  # the flipped object is still the tight box's pixels
                    ys, xs = np.nonzero(inst == g + 1)
                    assert (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) == tuple(box)
    plain = DownstreamRecipe(batch_size=5, flip=0.0, canvas_size=32)
    assert any(not np.array_equal(batch_at(canvases, "detect", recipe, 3, step)[0],
                                  batch_at(canvases, "detect", plain, 3, step)[0])
               for step in range(8))


def test_downstream_recipe_sources_and_bad_values():
    from keras_conmim.runs.downstream import resolve_recipe
    from keras_conmim.errors import ConfigError

    recipe, sources, text = resolve_recipe("segment", "pretrained", "vit_mini_p4_28",
                                           {"lr": 2e-3, "steps": None}, {"batch_size": 16})
    assert (recipe.lr, recipe.batch_size) == (2e-3, 16)
    assert sources["lr"] == "flag" and sources["batch_size"] == "file"
    assert sources["steps"] == "preset" and "<- flag" in text
    scratch, sources, _ = resolve_recipe("detect", "random", "vit_mini_p4_28")
    assert scratch.layer_decay == 1.0 and sources["layer_decay"].startswith("scratch recipe")
    for bad in ({"canvas_size": 40}, {"layer_decay": 0.0}, {"steps": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            resolve_recipe("segment", "pretrained", None, bad)


def test_detect_defaults_to_the_working_head_at_a_size_it_reads():
    """No --head: YOLOv8 whatever the start (KerasHub's ResNet-18 too), at 64 px
    unless a flag or file sets the canvas; the printed source says why."""
    import detect

    from keras_conmim.runs.downstream import resolve_recipe

    assert detect.HEADS[0] == "yolov8"
    need = detect.HEAD_RECIPE["yolov8"]
    recipe, sources, text = resolve_recipe("detect", "pretrained", "vit_mini_p4_28", {}, {}, need)
    assert recipe.canvas_size == 64 and sources["canvas_size"].startswith("head (yolov8")
    assert "multiple of 32" in text
    recipe, sources, _ = resolve_recipe("detect", "pretrained", None, {"canvas_size": 96}, {}, need)
    assert recipe.canvas_size == 96 and sources["canvas_size"] == "flag"
    recipe, _, _ = resolve_recipe("detect", "pretrained", None, {}, {}, detect.HEAD_RECIPE.get(
        "retinanet"))
    assert recipe.canvas_size == 48


def test_canvases_keep_the_items_own_size_whatever_the_encoder():
    """Canvases are scenes of 28 px items whatever the encoder's input size
    (a 48 px encoder once blew each item up to fill its canvas: another
    task, and a row that could not be compared)."""
    if BACKEND_ENV != "torch":
        pytest.skip("numpy data: the backend does not matter")
    from keras_conmim.runs.downstream import resolve_recipe, task_data

    recipe, _, _ = resolve_recipe("segment", "pretrained", "vit_mini_p4_48")
    counts = {"train_canvases": 32, "val_canvases": 4, "test_canvases": 16}
    _, _, test, num_classes, _ = task_data("segment", "default", None, recipe, 1, counts)
    boxes = test["boxes"][test["classes"] >= 0]
    assert test["images"].shape[1:] == (48, 48, 1) and num_classes == 10
    assert (boxes[:, 2:] - boxes[:, :2]).max() <= 28
