import gzip
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from keras_conmim import data


def _write_idx(path, array, gz):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + array.astype("uint8").tobytes())


@pytest.mark.parametrize("gz", [True, False])
def test_from_idx_reads_images_and_sibling_labels(tmp_path, gz):
    x = np.random.RandomState(0).randint(0, 256, (12, 28, 28))
    y = np.arange(12) % 10
    suffix = ".gz" if gz else ""
    images = os.path.join(tmp_path, f"train-images-idx3-ubyte{suffix}")
    _write_idx(images, x, gz)
    _write_idx(os.path.join(tmp_path, f"train-labels-idx1-ubyte{suffix}"), y, gz)
    source = data.from_idx(images)
    assert len(source) == 12 and source.image_size == (28, 28)
    np.testing.assert_array_equal(source.images[..., 0], x)
    np.testing.assert_array_equal(source.labels, y)
    resized = data.from_idx(images, image_size=32, resize="pad", channels="rgb")
    assert resized.images.shape == (12, 32, 32, 3)
    np.testing.assert_array_equal(resized.images[..., 0], resized.images[..., 2])


def test_truncated_idx_is_a_clear_error(tmp_path):
    path = os.path.join(tmp_path, "bad-images-idx3-ubyte")
    _write_idx(path, np.zeros((4, 5, 5)), gz=False)
    with open(path, "r+b") as f:
        f.truncate(40)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        data.read_idx(path)
    with pytest.raises(ValueError, match="not found"):
        data.from_idx(os.path.join(tmp_path, "missing"))


def test_from_arrays_checks_input():
    with pytest.raises(ValueError, match="uint8"):
        data.from_arrays(np.zeros((2, 8, 8, 3), "float32"))
    with pytest.raises(ValueError, match="shape"):
        data.from_arrays(np.zeros((2, 8), "uint8"))
    with pytest.raises(ValueError, match="labels"):
        data.from_arrays(np.zeros((2, 8, 8), "uint8"), y=[1])
    with pytest.raises(ValueError, match="crop, pad"):
        data.from_arrays(np.zeros((2, 8, 8), "uint8"), resize="stretch")
    crop = data.from_arrays(np.full((2, 10, 20, 3), 200, "uint8"), image_size=8, channels="gray")
    assert crop.images.shape == (2, 8, 8, 1) and abs(int(crop.images[0, 4, 4, 0]) - 200) <= 1
    pad = data.from_arrays(np.full((2, 10, 20, 3), 200, "uint8"), image_size=8, resize="pad")
    assert (pad.images[:, :2] == 0).all() and (pad.images[:, 3:5] > 0).all()  # nothing cut off


def _image_tree(root):
    rng = np.random.RandomState(0)
    for label, ext in (("cat", ".png"), ("dog", ".jpg"), ("eel", ".bmp"), ("fox", ".webp")):
        os.makedirs(os.path.join(root, label, "nested"), exist_ok=True)
        for i in range(3):
            arr = rng.randint(0, 256, (20 + i, 30, 3)).astype("uint8")
            Image.fromarray(arr).save(os.path.join(root, label, "nested" if i else "", f"{i}{ext}"))
    with open(os.path.join(root, "dog", "corrupt.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with open(os.path.join(root, "cat", "notes.txt"), "w") as f:
        f.write("ignored")


def test_from_directory_labels_and_corrupt_files(tmp_path):
    _image_tree(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = data.from_directory(str(tmp_path), image_size=16)
    messages = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert len(messages) == 1 and "corrupt.jpg" in messages[0] and "Skipped 1" in messages[0]
    assert len(source) == 12 and len(source.skipped) == 1
    assert source.class_names == ["cat", "dog", "eel", "fox"]
    assert sorted(np.bincount(source.labels)) == [3, 3, 3, 3]
    batch = source.batch(np.arange(12))
    assert batch.shape == (12, 16, 16, 3) and batch.dtype == np.uint8
    unlabeled = data.from_directory(str(tmp_path), image_size=16, labels=None, channels="gray")
    assert unlabeled.labels is None and unlabeled.batch([0]).shape == (1, 16, 16, 1)


def test_decode_failure_later_is_replaced_and_counted(tmp_path):
    _image_tree(tmp_path)
    source = data.from_directory(str(tmp_path), image_size=16)
    with open(source.paths[0], "wb") as f:  # broken after the up-front check
        f.write(b"garbage")
    batch = source.batch(np.arange(4))
    assert batch.shape == (4, 16, 16, 3) and source.failed_at_decode == 1


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(ValueError, match="No images"):
        data.from_directory(str(tmp_path), image_size=16)
    with pytest.raises(ValueError, match="not found"):
        data.from_directory(os.path.join(tmp_path, "nope"), image_size=16)


def _take(ds, n):
    if hasattr(ds, "take"):
        return [np.asarray(b) for b in ds.take(n)]
    return [ds[i][0] for i in range(n)]


@pytest.mark.parametrize("backend", ["tf", "numpy"])
def test_dataset_order_is_seeded_and_resumable(backend):
    source = data.load_default()
    full = _take(source.dataset(16, seed=3, backend=backend), 300)  # crosses an epoch (250)
    assert all(b.shape == (16, 28, 28, 1) and b.dtype == np.uint8 for b in full)
    resumed = _take(source.dataset(16, seed=3, start_step=260, backend=backend), 3)
    for a, b in zip(full[260:263], resumed):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(full[0], full[250])  # next epoch, new order
    other = _take(source.dataset(16, seed=4, backend=backend), 1)[0]
    assert not np.array_equal(full[0], other)


def test_tf_and_numpy_paths_agree():
    source = data.load_default()
    a = _take(source.dataset(8, seed=1, backend="tf"), 3)
    b = _take(source.dataset(8, seed=1, backend="numpy"), 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_from_tfds_mock():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=10):
        # mock_data stands in for the download (download=True) and the records
        source = data.from_tfds("mnist", split="train", download=True, image_size=32,
                                channels="rgb")
    assert len(source) == 10 and source.images.shape == (10, 32, 32, 3)
    assert source.labels is not None


def test_parse_data_spec():
    assert len(data.parse_data_spec("default", 28)) == 4000
    with pytest.raises(ValueError, match="default, idx:PATH"):
        data.parse_data_spec("s3:bucket", 28)


NO_TF_SCRIPT = """
import sys
import keras, numpy as np
import keras_conmim as kc
from keras_conmim import data
source = data.load_default()
ds = source.dataset(8, seed=0)
assert isinstance(ds, keras.utils.PyDataset), type(ds)
model = kc.ConMIM.from_preset("vit_mini_p4_28", encoder_kwargs=dict(num_layers=1))
model.compile(optimizer="adamw")
model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)
assert "tensorflow" not in sys.modules
print("OK", int(keras.ops.convert_to_numpy(model.step_counter)))
"""


@pytest.mark.skipif(keras.backend.backend() == "tensorflow", reason="TF is the backend here")
def test_numpy_path_without_tensorflow(tmp_path):
    """A JAX- or torch-only machine: site-packages without tensorflow."""
    import site

    overlay = os.path.join(tmp_path, "site")
    os.makedirs(overlay)
    for base in site.getsitepackages():
        for name in os.listdir(base):
            if not name.startswith(("tensorflow", "tf_keras", "_tensorflow")) and \
                    not os.path.exists(os.path.join(overlay, name)):
                os.symlink(os.path.join(base, name), os.path.join(overlay, name))
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), PYTHONPATH=f"{overlay}:{ROOT}")
    out = subprocess.run([sys.executable, "-S", "-c", NO_TF_SCRIPT],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0 and "OK 2" in out.stdout, out.stderr[-3000:]


def test_idx_spec_is_a_folder_or_the_train_file_everywhere(tmp_path):
    """`idx:PATH` means the same in every recipe: the folder of MNIST-format
    files or its train images file (the test split is the t10k sibling)."""
    rng = np.random.RandomState(0)
    for prefix, n in (("train", 12), ("t10k", 6)):
        _write_idx(os.path.join(tmp_path, f"{prefix}-images-idx3-ubyte.gz"),
                   rng.randint(0, 256, (n, 28, 28)), True)
        _write_idx(os.path.join(tmp_path, f"{prefix}-labels-idx1-ubyte.gz"), np.arange(n) % 3, True)
    train_file = os.path.join(tmp_path, "train-images-idx3-ubyte.gz")
    by_folder = data.load_splits(f"idx:{tmp_path}", 28)
    by_file = data.load_splits(f"idx:{train_file}", 28)
    for a, b, n in zip(by_folder, by_file, (12, 6)):
        assert len(a) == len(b) == n
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
    assert len(data.parse_data_spec(f"idx:{tmp_path}", 28)) == 12  # pre-training's spec too
    assert len(data.parse_data_spec(f"idx:{train_file}", 28)) == 12
    empty = os.path.join(tmp_path, "empty")
    os.makedirs(empty)
    with pytest.raises(ValueError, match="No train-images-idx3-ubyte"):
        data.from_idx(empty)
    with pytest.raises(ValueError, match="use default or idx:PATH"):
        data.load_splits("dir:/photos", 28)


def test_16_bit_png_and_gif_decode_as_tf_io_does(tmp_path):
    """16-bit gray PNGs scale to 8 bits (not clip to white); GIFs are read
    by `dir:` on both paths."""
    tf = pytest.importorskip("tensorflow")
    from keras_conmim.data.images import decode_file

    wide = (np.arange(64, dtype="uint16").reshape(8, 8) * 1000 + 128).astype("uint16")
    png16 = os.path.join(tmp_path, "a", "deep.png")
    os.makedirs(os.path.dirname(png16))
    Image.fromarray(wide).save(png16)
    with open(png16, "rb") as f:
        truth = tf.io.decode_image(f.read(), channels=1).numpy()[..., 0]
    ours = decode_file(png16)
    np.testing.assert_array_equal(ours, truth)
    assert abs(float(ours.mean()) - float(wide.mean()) / 256) < 1
    gif = os.path.join(tmp_path, "a", "anim.gif")
    Image.fromarray(np.full((8, 8, 3), 200, "uint8")).save(gif)
    source = data.from_directory(str(tmp_path), image_size=8, labels=None)
    assert sorted(os.path.basename(p) for p in source.paths) == ["anim.gif", "deep.png"]
    assert source.batch(np.arange(2)).shape == (2, 8, 8, 3)
