"""Every evaluation recipe on data in the formats users bring, a few steps
each, in-process: class folders (fine-tuning, probing), COCO files with
non-contiguous category ids and bad records (detection, segmentation),
mask-PNG folders (segmentation), and pre-training on a COCO file's images
whose encoder then starts detection on the same set."""

import json
import os

import numpy as np
import pytest

from conftest import tiny_vit

BACKEND = os.environ.get("KERAS_BACKEND", "jax")
pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def canvas_files(tmp_path_factory):
    """recipes/make_canvases.py's COCO + mask folders: RGB 64 px canvases,
    category ids 11..20, and a train file with a missing image, a box
    reaching outside its image, an unknown category and a zero-area box."""
    import make_canvases

    root = tmp_path_factory.mktemp("canvases")
    paths = make_canvases.main(["--output", str(root), "--rgb", "--train-canvases", "24",
                                "--test-canvases", "8", "--category-ids-from", "11"])
    coco = json.loads(open(paths["train"]).read())
    first = coco["annotations"][0]
    coco["images"].append({"id": 999, "file_name": "images/missing.png", "height": 64,
                           "width": 64})
    coco["annotations"] += [
        dict(first, id=1001, bbox=[50, 50, 30, 30], segmentation=[]),  # clipped
        dict(first, id=1002, category_id=77),  # unknown category
        dict(first, id=1003, bbox=[3, 3, 0, 0], segmentation=[]),  # zero area
    ]
    with open(paths["train"], "w") as f:
        json.dump(coco, f)
    return root, paths


def encoder_file(tmp_path):
    from keras_conmim.atomic import save_atomic

    return save_atomic(tiny_vit(), os.path.join(tmp_path, "vit.keras"))


DOWNSTREAM = ["--steps", "2", "--batch-size", "4", "--grid", "2", "--checkpoint-every", "2"]


def test_detect_and_segment_on_a_coco_file(tmp_path, canvas_files):
    pytest.importorskip("keras_hub")
    import detect
    import segment

    root, paths = canvas_files
    spec = ["--data", f"coco:{paths['train']}", "--test-data", f"coco:{paths['test']}",
            "--image-size", "64", "--backend", BACKEND, "--encoder", encoder_file(tmp_path)]
    result = detect.main([*spec, *DOWNSTREAM, "--output", str(tmp_path / "det")])
    assert result["class_names"][0] == "T-shirt/top" and len(result["class_names"]) == 10
    assert result["skipped"] == {"missing image": 1, "unknown category id": 1,
                                 "zero-area box": 1, "box clipped to its image": 1}
    assert any("RGB images converted to gray" in n for n in result["notes"])
    assert result["test_canvases"] == 8 and result["train_canvases"] + result["val_canvases"] == 24
    assert set(result["test"]) == {"map", "ap50"}
    assert os.path.isfile(tmp_path / "det" / "predictions.png")
    if BACKEND != "torch":
        return  # the same reader and loop on every backend: masks once
    result = segment.main([*spec, *DOWNSTREAM, "--output", str(tmp_path / "seg")])
    assert set(result["test"]) == {"miou", "pixel_accuracy"}
    import instance_segment

    result = instance_segment.main([*spec, *DOWNSTREAM, "--output", str(tmp_path / "inst")])
    assert set(result["test"]) == {"mask_map", "mask_ap50", "box_map", "box_ap50"}
    assert result["skipped"]["missing image"] == 1 and result["test_canvases"] == 8


def test_segment_on_a_mask_folder_with_a_held_out_test_share(tmp_path, canvas_files):
    pytest.importorskip("keras_hub")
    import segment

    root, _ = canvas_files
    result = segment.main(["--data", f"masks:{root}/train/images:{root}/train/masks",
                           "--image-size", "48", "--backend", BACKEND,
                           "--encoder", encoder_file(tmp_path), "--train-canvases", "6",
                           *DOWNSTREAM, "--output", str(tmp_path / "seg")])
    assert "held out by seed 0" in result["test_from"] and result["test_canvases"] == 5
    assert result["train_canvases"] == 6
    assert any("letterboxed to 48 x 48" in n for n in result["notes"])
    config = json.loads((tmp_path / "seg" / "config.json").read_text())
    assert config["data"].startswith("masks:") and config["test_data"] is None


def test_a_spec_that_does_not_fit_the_task_is_one_line(tmp_path, canvas_files):
    import detect

    from keras_conmim.errors import ConfigError, DataError

    root, paths = canvas_files
    common = ["--backend", BACKEND, "--encoder", encoder_file(tmp_path), "--output",
              str(tmp_path / "x"), *DOWNSTREAM]
    with pytest.raises(DataError, match="masks: data has no boxes"):
        detect.main(["--data", f"masks:{root}/train/images:{root}/train/masks", *common])
    import instance_segment

    with pytest.raises(DataError, match="masks: data has no boxes or objects; instance"):
        instance_segment.main(["--data", f"masks:{root}/train/images:{root}/train/masks",
                               *common])
    with pytest.raises(DataError, match="--data foo:x: use one of default .* coco:ANNOTATIONS"):
        detect.main(["--data", "foo:x", *common])
    with pytest.raises(DataError, match="annotation file not found"):
        detect.main(["--data", f"coco:{tmp_path}/none.json", *common])
    with pytest.raises(ConfigError, match="--test-data goes with coco: / masks:"):
        detect.main(["--test-data", f"coco:{paths['test']}", *common])
    assert not os.path.exists(tmp_path / "x")  # nothing written


def class_folders(root, n=6):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("test", 2)):
        for k, name in enumerate(("circle", "square", "stripes")):
            os.makedirs(root / split / name)
            for i in range(count):
                image = rng.integers(0, 60, (48, 48, 3), dtype=np.uint8)
                image[8 * k: 8 * k + 16] += 150  # a class-dependent band
                Image.fromarray(image).save(root / split / name / f"{i}.png")


def test_finetune_and_probe_on_class_folders(tmp_path):
    import finetune
    import linear_probe

    class_folders(tmp_path)
    data = ["--data", f"dir:{tmp_path}/train", "--test-data", f"dir:{tmp_path}/test"]
    top1 = finetune.main(["--from-scratch", "--preset", "vit_tiny_p4_32", *data, "--backend",
                          BACKEND, "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "6",
                          "--min-steps", "0", "--output", str(tmp_path / "clf"),
                          "--results-json", str(tmp_path / "ft.json")])
    assert 0 <= top1 <= 1
    result = json.loads((tmp_path / "ft.json").read_text())
    assert result["class_names"] == ["circle", "square", "stripes"] and result["test_images"] == 6
    import keras

    import keras_conmim  # noqa: F401  (registers the classifier)

    model = keras.saving.load_model(str(tmp_path / "clf" / "classifier.keras"))
    assert model.class_names == ("circle", "square", "stripes")
    if BACKEND != "torch":
        return
    results = linear_probe.main(["--from-scratch", "--preset", "vit_tiny_p4_32", *data,
                                 "--backend", BACKEND, "--probe-epochs", "2",
                                 "--probe-weight-decay", "0",
                                 "--results-json", str(tmp_path / "lp.json")])
    linear, knn = results
    assert 0 <= linear <= 1 and 0 <= knn <= 1
    probe = json.loads((tmp_path / "lp.json").read_text())
    assert probe["class_names"] == ["circle", "square", "stripes"] and probe["test_images"] == 6


def test_pretrain_on_a_coco_file_then_detect_from_it(tmp_path, canvas_files):
    """`pretrain.py --data coco:...` reads the images; its conmim.keras
    starts detection on the same set."""
    if BACKEND != "torch":
        pytest.skip("the image side is the same source on every backend")
    pytest.importorskip("keras_hub")
    import detect
    import pretrain

    _, paths = canvas_files
    pretrain.main(["--backend", BACKEND, "--data", f"coco:{paths['train']}", "--epochs", "1",
                   "--steps-per-epoch", "2", "--batch-size", "8", "--output",
                   str(tmp_path / "pre")])
    result = detect.main(["--data", f"coco:{paths['train']}", "--image-size", "64",
                          "--backend", BACKEND, "--encoder", str(tmp_path / "pre" / "conmim.keras"),
                          *DOWNSTREAM, "--output", str(tmp_path / "det")])
    assert set(result["test"]) == {"map", "ap50"}
    config = json.loads((tmp_path / "det" / "config.json").read_text())
    assert config["encoder"].endswith("conmim.keras")
