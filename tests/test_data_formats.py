"""The data a user brings: labelled class folders, COCO files (polygons,
uncompressed and compressed RLE, crowd regions, non-contiguous category ids),
mask-PNG folders; bad input named, counted and skipped; the box metric equal
to pycocotools' COCOeval. numpy only: these run once, on any backend."""

import json
import os

import numpy as np
import pytest

from keras_conmim.data.canvas import make_canvases
from keras_conmim.data.dense import read_dense, write_coco
from keras_conmim.data.labelled import load_labelled
from keras_conmim.downstream.metrics import coco_map, mean_iou
from conftest import uint8_images

pycocotools = pytest.importorskip("pycocotools")
from PIL import Image  # noqa: E402

NAMES = ["a", "b", "c"]


def canvases(count=6, size=40, seed=0):
    items = uint8_images(30, size=14, seed=seed) | 64  # every item pixel above the threshold
    return make_canvases(items, np.arange(30) % 3, count, canvas_size=size, max_items=2,
                         seed=seed)


def coco_set(tmp_path, count=6, size=40):
    """Canvases written as COCO, with category ids 11..13, one annotation a
    polygon, one uncompressed RLE, the rest compressed RLE."""
    data = canvases(count, size)
    path = write_coco(data, str(tmp_path), NAMES)
    coco = json.loads(open(path).read())
    for c in coco["categories"]:
        c["id"] += 10
    for a in coco["annotations"]:
        a["category_id"] += 10
    mask_api = pycocotools.mask
    first, second = coco["annotations"][0], coco["annotations"][1]
    x, y, w, h = first["bbox"]
    first["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]  # a box polygon
    pixels = mask_api.decode({"size": second["segmentation"]["size"],
                              "counts": second["segmentation"]["counts"].encode()})
    flat = pixels.T.reshape(-1).astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [len(flat)]])
    second["segmentation"] = {"size": [size, size],
                              "counts": ([0] if flat[0] else []) + np.diff(bounds).tolist()}
    with open(path, "w") as f:
        json.dump(coco, f)
    return data, path, coco


def test_coco_file_reads_back_the_canvases(tmp_path):
    data, path, coco = coco_set(tmp_path)
    dense = read_dense(f"coco:{path}", 40, 1)
    assert dense.class_names == tuple(NAMES) and len(dense) == 6 and dense.has_masks
    np.testing.assert_array_equal(dense["images"], data["images"])
    # boxes and classes equal (order within an image: by area)
    for i in range(6):
        want = sorted(map(tuple, np.c_[data["boxes"][i], data["classes"][i]][data["classes"][i] >= 0]))
        got = sorted(map(tuple, np.c_[dense["boxes"][i], dense["classes"][i]][dense["classes"][i] >= 0]))
        np.testing.assert_allclose(np.array(got), np.array(want))
    # masks equal except where the first annotation's polygon (its whole box) replaced its pixels
    first = coco["annotations"][0]
    x, y, w, h = first["bbox"]
    outside = np.ones((6, 40, 40), bool)
    outside[first["image_id"] - 1, y:y + h, x:x + w] = False
    np.testing.assert_array_equal(dense["masks"][outside], data["masks"][outside])
    region = dense["masks"][first["image_id"] - 1, y + 1:y + h - 1, x + 1:x + w - 1]
    assert (region == first["category_id"] - 10).all()  # class k -> k + 1 in a mask
    # one instance per annotation: row g's pixels are g + 1, within its box, of its class
    for i in range(6):
        for g in np.nonzero(dense["classes"][i] >= 0)[0]:
            mine = dense["instances"][i] == g + 1
            y0, x0, y1, x1 = dense["boxes"][i, g]
            ys, xs = np.nonzero(mine)
            assert len(ys) and ys.min() >= y0 and ys.max() < y1 and xs.min() >= x0 and xs.max() < x1
            assert (dense["masks"][i][mine] == dense["classes"][i, g] + 1).all()
        assert ((dense["instances"][i] > 0) == (dense["masks"][i] > 0)).all()
    # the mask folder the same writer made reads to the same masks
    folder = read_dense(f"masks:{tmp_path}/images:{tmp_path}/masks", 40, 1)
    np.testing.assert_array_equal(folder["masks"], data["masks"])
    assert folder.class_names == tuple(NAMES) and not folder.has_boxes


def test_letterbox_moves_boxes_and_masks(tmp_path):
    data, path, _ = coco_set(tmp_path, count=2, size=40)
    small = read_dense(f"coco:{path}", 32, 3)  # 40 -> 32: scale 0.8, gray -> RGB
    assert small["images"].shape == (2, 32, 32, 3)
    assert any("letterboxed" in n for n in small.notes) and any("RGB" in n for n in small.notes)
    k = data["classes"][0] >= 0
    got = small["boxes"][0][small["classes"][0] >= 0]
    np.testing.assert_allclose(sorted(map(tuple, got)), sorted(map(tuple, data["boxes"][0][k] * 0.8)),
                               atol=1e-4)
    wide = Image.fromarray(np.zeros((20, 40), np.uint8))  # a 2:1 image pads below
    os.makedirs(tmp_path / "wide" / "m")
    wide.save(tmp_path / "wide" / "x.png")
    Image.fromarray(np.ones((20, 40), np.uint8)).save(tmp_path / "wide" / "m" / "x.png")
    padded = read_dense(f"masks:{tmp_path}/wide:{tmp_path}/wide/m", 32, 1)
    assert (padded["masks"][0, :16] == 1).all() and (padded["masks"][0, 16:] == 255).all()


def test_crowd_regions_and_bad_annotations_are_counted(tmp_path):
    _, path, coco = coco_set(tmp_path)
    crowd = dict(coco["annotations"][2], id=900, iscrowd=1)
    coco["annotations"].pop(2)
    coco["annotations"] += [
        crowd,
        dict(coco["annotations"][3], id=901, category_id=99),  # unknown category
        dict(coco["annotations"][3], id=902, image_id=777),  # unknown image
        dict(coco["annotations"][3], id=903, bbox=[5, 5, 0, 4], segmentation=[]),  # zero area
        dict(coco["annotations"][3], id=904, bbox=[30, 30, 20, 20], segmentation=[]),  # clipped
        dict(coco["annotations"][3], id=905, segmentation={"size": [10, 10], "counts": [100]}),
    ]
    coco["images"].append({"id": 50, "file_name": "images/none.png", "height": 40, "width": 40})
    with open(tmp_path / "bad.png", "wb") as f:
        f.write(b"not a png")
    coco["images"].append({"id": 51, "file_name": "bad.png", "height": 40, "width": 40})
    with open(path, "w") as f:
        json.dump(coco, f)
    dense = read_dense(f"coco:{path}", 40, 1)
    assert dense.skipped == {"missing image": 1, "unreadable image": 1,
                             "annotation of an unknown image": 1, "unknown category id": 1,
                             "zero-area box": 1, "box clipped to its image": 1,
                             "mask of another size than its image": 1}
    image = crowd["image_id"] - 1
    assert (dense["crowd_classes"][image] == crowd["category_id"] - 11).any()
    assert (dense["masks"][image] == 255).any()  # crowd pixels are ignored, not trained on
    assert ((dense["instances"][image] == 255) == (dense["masks"][image] == 255)).all()
    clipped = dense["boxes"][coco["annotations"][3]["image_id"] - 1]
    assert (clipped <= 40).all()


def test_specs_that_cannot_work_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="annotation file not found"):
        read_dense(f"coco:{tmp_path}/none.json", 32, 1)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="not a COCO file"):
        read_dense(f"coco:{tmp_path}/x.json", 32, 1)
    with pytest.raises(ValueError, match="masks:IMAGE_DIR:MASK_DIR"):
        read_dense(f"masks:{tmp_path}", 32, 1)
    with pytest.raises(ValueError, match="not a detection / segmentation spec"):
        read_dense("dir:x", 32, 1)
    os.makedirs(tmp_path / "img")
    os.makedirs(tmp_path / "msk")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "img" / "a.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "msk" / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "img" / "b.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "msk" / "c.png")
    with pytest.raises(ValueError, match="no usable image.*1 image without a mask.*1 mask without "
                                         "an image.*1 mask of another size"):
        read_dense(f"masks:{tmp_path}/img:{tmp_path}/msk", 32, 1)


def class_folders(root, classes=("cat", "dog"), n=5, size=20):
    rng = np.random.default_rng(0)
    for c in classes:
        os.makedirs(root / c, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png")


def test_class_folders_with_bad_files(tmp_path):
    class_folders(tmp_path / "train")
    class_folders(tmp_path / "test", classes=("dog",), n=2)
    os.makedirs(tmp_path / "train" / "empty")
    (tmp_path / "train" / "dog" / "broken.png").write_bytes(b"junk")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "train" / "loose.png")
    splits = load_labelled(f"dir:{tmp_path}/train", f"dir:{tmp_path}/test", (16, 16),
                           channels="gray")
    assert splits.class_names == ("cat", "dog") and len(splits.train) == 10
    assert (splits.test.labels == 1).all()  # the test folder's only class is "dog", label 1
    assert splits.skipped_counts() == {"unreadable image": 1, "empty class folder": 1,
                                       "image outside a class folder": 1}
    assert "RGB images converted to gray" in "\n".join(splits.describe())
    held = load_labelled(f"dir:{tmp_path}/train", None, (16, 16), seed=3)
    assert len(held.test) == 2 and len(held.train) == 8 and "held out by seed 3" in held.test_from
    assert sorted(held.test.labels) == [0, 1]


def test_labelled_specs_that_cannot_work(tmp_path):
    with pytest.raises(ValueError, match=r"^--data dir:\S+/none: folder not found"):
        load_labelled(f"dir:{tmp_path}/none")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "loose.png")
    with pytest.raises(ValueError, match="one sub-folder per class"):
        load_labelled(f"dir:{tmp_path}")
    class_folders(tmp_path / "one", classes=("cat",))
    with pytest.raises(ValueError, match="only one class"):
        load_labelled(f"dir:{tmp_path}/one")
    class_folders(tmp_path / "two")
    class_folders(tmp_path / "other", classes=("eel",))
    with pytest.raises(ValueError, match=r"^--test-data dir:\S+/other: class\(es\) eel are not "
                                         "among the training classes"):
        load_labelled(f"dir:{tmp_path}/two", f"dir:{tmp_path}/other")
    with pytest.raises(ValueError, match="not a labelled image spec"):
        load_labelled("coco:x.json")


def test_mean_iou_skips_ignored_pixels():
    true = np.array([[1, 255], [0, 0]])
    assert mean_iou(np.array([[1, 0], [0, 0]]), true, 2) == 1.0
    assert mean_iou(np.array([[1, 1], [0, 0]]), true, 2) == 1.0


def cocoeval(pred, truth, crowd, size=64):
    """pycocotools' bbox AP and AP50 on the same boxes (yxyx -> xywh)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, dets = [], [], []

    def xywh(b):
        return [float(b[1]), float(b[0]), float(b[3] - b[1]), float(b[2] - b[0])]

    for i in range(len(truth["boxes"])):
        images.append({"id": i + 1, "height": size, "width": size})
        for rows, is_crowd in ((truth, 0), (crowd, 1)):
            for b, c in zip(rows["boxes"][i], rows["classes"][i]):
                if c >= 0:
                    box = xywh(b)
                    anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                                 "bbox": box, "area": box[2] * box[3], "iscrowd": is_crowd})
        for b, s, c in zip(pred["boxes"][i], pred["scores"][i], pred["classes"][i]):
            if c >= 0:
                dets.append({"image_id": i + 1, "category_id": int(c) + 1, "bbox": xywh(b),
                             "score": float(s)})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": k + 1, "name": str(k)} for k in range(3)]}
    gt.createIndex()
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats[0], ev.stats[1]


def random_boxes(rng, n, k, size=64):
    y0, x0 = rng.uniform(0, size - 12, (2, n, k))
    h, w = rng.uniform(4, 12, (2, n, k))
    return np.stack([y0, x0, y0 + h, x0 + w], -1).astype("float32")


def test_coco_map_equals_pycocotools_with_crowd_regions():
    rng = np.random.default_rng(0)
    n = 12
    truth = {"boxes": random_boxes(rng, n, 3), "classes": rng.integers(-1, 3, (n, 3))}
    truth["classes"][:, 0] = rng.integers(0, 3, n)  # every image has a box
    crowd = {"boxes": random_boxes(rng, n, 1), "classes": rng.integers(-1, 3, (n, 1))}
    # detections: jittered truths (hits at some thresholds), crowd-covering boxes, noise
    jitter = truth["boxes"] + rng.normal(0, 1.2, truth["boxes"].shape).astype("float32")
    inside = crowd["boxes"] + np.array([1, 1, -1, -1], "float32")
    pred = {"boxes": np.concatenate([jitter, inside, random_boxes(rng, n, 4)], 1),
            "classes": np.concatenate([truth["classes"], crowd["classes"],
                                       rng.integers(0, 3, (n, 4))], 1),
            "scores": rng.uniform(0, 1, (n, 8))}
    ours = coco_map(pred["boxes"], pred["scores"], pred["classes"], truth["boxes"],
                    truth["classes"], crowd["boxes"], crowd["classes"])
    ap, ap50 = cocoeval(pred, truth, crowd)
    assert ours["map"] == pytest.approx(ap, abs=1e-9) and ours["ap50"] == pytest.approx(ap50, abs=1e-9)
    without = coco_map(pred["boxes"], pred["scores"], pred["classes"], truth["boxes"],
                       truth["classes"])
    assert without["map"] < ours["map"]  # the crowd-covering detections would be misses
    no_crowd = {"boxes": crowd["boxes"], "classes": np.full_like(crowd["classes"], -1)}
    assert without["map"] == pytest.approx(cocoeval(pred, truth, no_crowd)[0], abs=1e-9)


def test_a_tfds_classification_set_with_its_own_test_split():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        splits = load_labelled("tfds:mnist", None, (16, 16), channels="gray", download=True)
        assert splits.test_from == "the test split of tfds:mnist"
        assert splits.class_names == tuple(str(k) for k in range(10))
        assert splits.train.images.shape == (12, 16, 16, 1) and len(splits.test) == 12
        named = load_labelled("tfds:mnist:train", "tfds:mnist:test", (16, 16), download=True)
        assert named.test_from == "--test-data tfds:mnist:test"
