"""Every failure a user can cause is one line naming the problem and the fix,
with no traceback, and loses nothing (docs/pretraining.md, "What a run
promises"). The recipes run with a user's command-line arguments through
their own `main` and one-line error path (`conftest.run_recipe`, in this
interpreter); the backend does not change what they check, so the
command-line cases run on JAX only.
`ConMIM.fit`'s input contract is the model's and runs on every backend."""

import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

import keras_conmim as kc
from conftest import run_recipe, tiny_vit, uint8_images

BACKEND = keras.backend.backend()
jax_only = pytest.mark.skipif(BACKEND != "jax", reason="recipe checks: the backend does not "
                              "matter, run on JAX")
TINY = ["--image-size", "16", "--patch-size", "4", "--batch-size", "4", "--steps-per-epoch", "2",
        "--view-grid-every", "100", "--epochs", "1"]


def one_line(done, *fragments):
    """The run failed with one `error:` line (continuations aside) holding
    every fragment, and no traceback."""
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    text = done.stderr[done.stderr.index("error:"):]
    for fragment in fragments:
        assert fragment in text, (fragment, text)


@jax_only
def test_an_output_that_cannot_be_written_is_refused_before_training(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    one_line(run_recipe("pretrain", *TINY, "--output", str(a_file / "run")),
             f"{a_file / 'run'}: cannot make this folder", "Pass a folder you can write")
    one_line(run_recipe("pretrain", *TINY, "--output", "/proc/conmim_run"),
             "/proc/conmim_run: cannot make this folder")
    assert a_file.read_text() == "x"


@jax_only
def test_a_full_disk_mid_run_stops_naming_the_last_good_checkpoint(tmp_path, monkeypatch):
    import errno

    from keras_conmim import atomic

    from keras_conmim.models import callbacks
    from keras_conmim.errors import StorageError
    from keras_conmim.runs import pretraining
    from recipes import pretrain

    real = atomic.save_atomic
    calls = []

    def full_after_two(model, path):
        calls.append(path)
        if len(calls) > 3:  # the initial state, then two epochs' checkpoints
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(model, path)

    monkeypatch.setattr(callbacks, "save_atomic", full_after_two)
    monkeypatch.setattr(pretraining, "save_atomic", full_after_two)
    out = tmp_path / "run"
    with pytest.raises(StorageError, match=r"(?s)No space left on device.*Last good checkpoint: "
                       r".*ckpt-00000002\.keras.*run the same command"):
        pretrain.main(["--backend", "jax", "--output", str(out), *TINY, "--epochs", "3",
                       "--steps-per-epoch", "1", "--view-grid-every", "100"])
    rows = (out / "log.csv").read_text().splitlines()
    # header + 2 epochs, never truncated, + the third, which trained but was not saved
    assert len(rows) == 4 and rows[0].startswith("epoch")
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]
    assert sorted(os.listdir(out / "checkpoints")) == [
        "ckpt-00000000.keras", "ckpt-00000001.keras", "ckpt-00000002.keras"]


@jax_only
def test_export_output_and_onnx_converter_are_checked_before_the_model_loads(tmp_path, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    bad = run_recipe("export", "--format", "keras", "--output", str(a_file / "enc.keras"))
    assert bad.returncode == 2 and "is a file, not a folder" in bad.stderr
    assert "Traceback" not in bad.stderr
    monkeypatch.setitem(sys.modules, "jax2onnx", None)  # as if it were not installed
    missing = run_recipe("export", "--format", "onnx", "--output", str(tmp_path / "e.onnx"))
    assert missing.returncode == 2 and "needs jax2onnx" in missing.stderr, missing.stderr[-2000:]
    assert "Traceback" not in missing.stderr


@jax_only
def test_finetune_encoder_that_is_no_vit_or_unsafe_is_one_line(tmp_path):
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    dense.save(tmp_path / "dense.keras")
    one_line(run_recipe("finetune", "--encoder", str(tmp_path / "dense.keras"), "--output",
                    str(tmp_path / "c")),
             f"--encoder {tmp_path / 'dense.keras'}", "has no ViT encoder")
    lam = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2)])
    lam.save(tmp_path / "lambda.keras")
    done = run_recipe("finetune", "--encoder", str(tmp_path / "lambda.keras"), "--output",
                  str(tmp_path / "c"))
    one_line(done, f"--encoder {tmp_path / 'lambda.keras'}")
    assert not os.path.exists(tmp_path / "c")


@jax_only
@pytest.mark.parametrize("name,text,where", [
    ("bad.json", '{"lr": 0.001,\n "epochs": }\n', "not valid JSON at line 2, column 12"),
    ("bad.yaml", "lr: 0.001\nepochs: [1, 2\n", "not valid YAML at line 3, column 1"),
])
def test_a_malformed_config_file_names_file_line_and_column(tmp_path, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    one_line(run_recipe("pretrain", "--config", str(path), "--output", str(tmp_path / "run")),
             f"--config {path}: {where}")
    assert not (tmp_path / "run").exists()


@jax_only
def test_skipped_files_are_counted_and_named_at_the_end(tmp_path):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(8):
        Image.fromarray(uint8_images(1, 16, 3, seed=i)[0]).save(photos / f"ok_{i}.png")
    (photos / "notes.jpg").write_text("not an image")
    (photos / "empty.png").write_bytes(b"")
    out = tmp_path / "run"
    done = run_recipe("pretrain", "--data", f"dir:{photos}", "--preset", "vit_tiny_p4_32",
                      "--output", str(out), *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = [line for line in done.stdout.splitlines() if line.startswith("skipped 2 image")]
    assert summary and "notes.jpg" in summary[0] and "empty.png" in summary[0], done.stdout[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["skipped_files"] == 2
    assert sorted(os.path.basename(p) for p in results["skipped"]) == ["empty.png", "notes.jpg"]


# ---- ConMIM.fit's input contract (every backend) ------------------------------------

def _model():
    model = kc.ConMIM(tiny_vit(), projector=kc.ProjectionHead(16, 8), seed=0)
    model.compile(optimizer="adamw")
    return model


def test_fit_names_empty_data_and_the_arrays_own_dtype():
    model = _model()
    with pytest.raises(ValueError, match="the data is empty"):
        model.fit(np.zeros((0, 16, 16, 1), "uint8"), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="received dtype int64"):  # not JAX's int32
        model.fit(np.zeros((4, 16, 16, 1), "int64"), epochs=1, verbose=0)


def test_fit_says_how_to_convert_channels():
    model = _model()
    with pytest.raises(ValueError, match=r"RGB images for a grayscale encoder.*x\.mean\(-1"):
        model.fit(uint8_images(4, 16, 3), epochs=1, verbose=0)
    rgb = kc.ConMIM(tiny_vit(image_shape=(16, 16, 3)), projector=kc.ProjectionHead(16, 8))
    rgb.compile(optimizer="adamw")
    with pytest.raises(ValueError, match=r"grayscale images for an RGB encoder.*np\.repeat"):
        rgb.fit(uint8_images(4, 16, 1), epochs=1, verbose=0)


def test_fit_resizes_another_image_size_on_purpose_and_says_so_once():
    model = _model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(uint8_images(4, 20, 1), batch_size=4, epochs=2, verbose=0)
    said = [w for w in caught if "crop and resize each image" in str(w.message)]
    assert len(said) == 1 and "20x20" in str(said[0].message) and "16x16" in str(said[0].message)


@jax_only
def test_downstream_recipes_refuse_bad_settings_before_any_file(tmp_path):
    """A bad recipe value, a head that cannot take the start, an export the
    backend cannot write, a bad --data, a batch larger than the training set:
    one line each, no run folder made."""
    out = tmp_path / "run"
    one_line(run_recipe("segment", "--canvas-size", "40", "--output", str(out)),
             "canvas_size=40", "multiple of 16")
    one_line(run_recipe("segment", "--head", "segformer", "--init", "resnet18", "--output",
                        str(out)), "--head segformer", "--head deeplabv3")
    one_line(run_recipe("detect", "--export", "saved_model", "--output", str(out)),
             "--export saved_model", "--backend tensorflow")
    one_line(run_recipe("segment", "--data", "idx:/no/such/folder", "--output", str(out)),
             "--data idx:/no/such/folder")
    # a batch larger than the training set would train at another size than recorded
    one_line(run_recipe("instance_segment", "--train-canvases", "16", "--batch-size", "64",
                    "--output", str(out)), "batch_size 64", "16 training images")
    assert not out.exists()


@jax_only
def test_an_export_into_a_folder_that_cannot_be_made_is_one_line(tmp_path):
    """The atomic writers name the file and the fix when its folder cannot be
    made (here: under /proc), for every format."""
    for fmt, name in (("keras", "enc.keras"), ("tf_saved_model", "serving")):
        one_line(run_recipe("export", "--format", fmt, "--output", f"/proc/keras_conmim/{name}"),
                 f"cannot write /proc/keras_conmim/{name}", "writable folder")


@jax_only
@pytest.mark.parametrize("recipe", ["pretrain.py", "detect.py", "make_canvases.py"])
def test_a_recipe_run_without_the_package_installed_says_how_to_install_it(recipe):
    # `python -S` skips site-packages, where `pip install -e .` put the package:
    # the state of a fresh clone run before installing.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-S", os.path.join("recipes", recipe), "--help"],
                          cwd=root, env=env, capture_output=True, text=True)
    one_line(done, "keras_conmim is not installed", f"pip install -e {root}")
