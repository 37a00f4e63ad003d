"""Input that streams: TFDS records read lazily by index (ArrayRecord), and
folders decoded with tf.io inside tf.data; both sharded per host, both
resuming exactly. Data made here, nothing downloaded."""

import os

import numpy as np
import pytest

from keras_conmim import data

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")


class ConmimTinyImages(tfds.core.GeneratorBasedBuilder):
    """30 train images of varied sizes, 3 classes (built in the test's folder)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 30)}

    def _generate_examples(self, seed, n):
        rng = np.random.RandomState(seed)
        for i in range(n):
            size = (10 + i % 5, 12 + i % 3, 3)
            yield i, {"image": rng.randint(0, 255, size).astype("uint8"), "label": i % 3}


def _take(ds, n):
    return [np.asarray(b) for b in ds.take(n).as_numpy_iterator()]


def test_tfds_streams_by_index_shards_and_resumes(tmp_path):
    root = str(tmp_path)
    ConmimTinyImages(data_dir=root, file_format="array_record").download_and_prepare()
    source = data.from_tfds("conmim_tiny_images", data_dir=root, download=False, image_size=8,
                            streaming=True)
    assert source.images is None and source.records is not None and len(source) == 30
    # each batch = the records the (seed, step) order names, prepared one by one
    whole = _take(source.dataset(6, seed=3), 7)  # 7 steps: into the second epoch
    for step in (0, 6):
        expected = np.stack([data.images.prepare(
            np.asarray(source.records[int(i)]["image"]), (8, 8)) for i in
            source.batch_indices(6, 3, step)])
        np.testing.assert_array_equal(whole[step], expected)
    np.testing.assert_array_equal(_take(source.dataset(6, seed=3, start_step=4), 1)[0], whole[4])
    shards = [_take(source.dataset(3, seed=3, num_shards=2, shard_index=i), 7) for i in (0, 1)]
    for step in range(7):  # two hosts read the one-host batch between them
        np.testing.assert_array_equal(np.concatenate([shards[0][step], shards[1][step]]),
                                      whole[step])
    # "auto" streams an ArrayRecord dataset; labels stay unread
    assert data.from_tfds("conmim_tiny_images", data_dir=root, download=False,
                          image_size=8).records is not None
    with pytest.raises(ValueError, match="streaming record source"):
        source.subset([0, 1])
    with pytest.raises(ValueError, match="no labels"):
        source.labelled_subset(1)


def test_tfds_streaming_needs_array_record(tmp_path):
    root = str(tmp_path)
    ConmimTinyImages(data_dir=root, file_format="tfrecord").download_and_prepare()
    with pytest.raises(ValueError, match="no random access: prepare it as ArrayRecord"):
        data.from_tfds("conmim_tiny_images", data_dir=root, download=False, streaming=True)
    source = data.from_tfds("conmim_tiny_images", data_dir=root, download=False, image_size=8)
    assert source.images.shape == (30, 8, 8, 3) and len(source.labels) == 30  # auto: in memory


def test_tfds_not_prepared_fails_at_once_without_downloading(tmp_path):
    """Offline, nothing is downloaded unless asked: an unprepared dataset is
    an error naming the folder and how to prepare it; so is an unknown name."""
    with pytest.raises(ValueError, match=r"'conmim_tiny_images' is not prepared in .*"
                                         r"tfds build conmim_tiny_images.*--tfds-download"):
        data.from_tfds("conmim_tiny_images", data_dir=str(tmp_path), download=False)
    with pytest.raises(ValueError, match="tfds has no dataset 'no_such_set_xyz'"):
        data.from_tfds("no_such_set_xyz", data_dir=str(tmp_path), download=False)


def _write_folder(root, n=12):
    from PIL import Image

    rng = np.random.RandomState(0)
    for i in range(n):
        folder = os.path.join(root, f"class{i % 2}")
        os.makedirs(folder, exist_ok=True)
        h, w = 30 + 7 * (i % 4), 26 + 5 * (i % 3)
        yy, xx = np.mgrid[:h, :w]
        image = np.stack([(yy * 5 + xx * 3 + 40 * c) % 256 for c in range(3)], -1)
        image = np.clip(image + rng.randint(-10, 10, image.shape), 0, 255).astype("uint8")
        ext = ".png" if i % 2 else ".jpg"
        Image.fromarray(image).save(os.path.join(folder, f"{i}{ext}"), quality=95)
    return root


def test_folders_decode_with_tf_io_like_pil(tmp_path):
    root = _write_folder(str(tmp_path))
    for resize, tolerance in (("center", 1.0), ("crop", 6.0), ("pad", 6.0)):
        for channels in ("rgb", "gray"):
            source = data.from_directory(root, image_size=24, resize=resize, channels=channels)
            fast = _take(source.dataset(4, seed=1, decoder="tf"), 3)
            slow = _take(source.dataset(4, seed=1, decoder="pil"), 3)
            for a, b in zip(fast, slow):
                assert a.shape == b.shape == (4, 24, 24, 3 if channels == "rgb" else 1)
                png = [i for i, k in enumerate(source.batch_indices(4, 1, 0))
                       if source.paths[k].endswith(".png")]
                diff = np.abs(a.astype(int) - b.astype(int))
                # bicubic resamplers (and JPEG gray conversions) differ; unscaled PNGs match
                assert diff.mean() <= tolerance, (resize, channels, diff.mean())
            if resize == "center":
                np.testing.assert_array_equal(fast[0][png], slow[0][png])
    source = data.from_directory(root, image_size=24)
    full = _take(source.dataset(4, seed=1), 5)  # auto: tf.io for jpg/png
    np.testing.assert_array_equal(_take(source.dataset(4, seed=1, start_step=3), 1)[0], full[3])
    halves = [_take(source.dataset(2, seed=1, num_shards=2, shard_index=i), 5) for i in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([halves[0][4], halves[1][4]]), full[4])
    with pytest.raises(ValueError, match="decoder must be"):
        source.dataset(4, decoder="opencv")


def test_a_truncated_jpeg_does_not_stop_the_stream(tmp_path):
    root = _write_folder(str(tmp_path), n=4)
    path = os.path.join(root, "class0", "0.jpg")
    with open(path, "rb") as f:
        raw = f.read()
    source = data.from_directory(root, image_size=16, verify=False)
    with open(path, "wb") as f:
        f.write(raw[: len(raw) // 2])  # cut after listing, as a dying disk would
    batches = _take(source.dataset(4, seed=0, decoder="tf"), 2)
    assert all(b.shape == (4, 16, 16, 3) for b in batches)
    assert source.failed_at_decode >= 1  # skipped and counted, batch kept full


def test_any_file_tf_io_cannot_read_is_decoded_by_pil_or_skipped_and_named(tmp_path):
    """A TIFF named .png (PIL reads it, tf.io does not), a file deleted after
    listing and a garbage file: the tf.io pipeline goes on, the batch stays
    full, PIL decodes the TIFF, the other two are skipped, counted and named,
    and a resumed stream reads the same batches."""
    from PIL import Image

    root = _write_folder(str(tmp_path), n=8)  # two full batches an epoch: every file read
    paths = sorted(os.path.join(r, n) for r, _, names in os.walk(root) for n in names)
    tiff, gone, garbage = paths[0], paths[1], paths[2]
    Image.fromarray(np.full((20, 20, 3), 77, "uint8")).save(tiff, format="TIFF")
    source = data.from_directory(root, image_size=16, verify=False)
    os.remove(gone)
    with open(garbage, "wb") as f:
        f.write(b"not an image at all")
    steps = source.steps_per_epoch(4)
    with pytest.warns(UserWarning, match="cannot be decoded"):
        batches = _take(source.dataset(4, seed=0, decoder="tf"), 2 * steps)
    assert all(b.shape == (4, 16, 16, 3) for b in batches)
    assert sorted(source.failed_files) == sorted([gone, garbage])
    assert source.failed_at_decode >= 2
    index = source.paths.index(tiff)
    step, row = next((s, list(source.batch_indices(4, 0, s)).index(index))
                     for s in range(steps) if index in source.batch_indices(4, 0, s))
    np.testing.assert_array_equal(batches[step][row], 77)  # the TIFF, decoded by PIL
    np.testing.assert_array_equal(_take(source.dataset(4, seed=0, decoder="tf",
                                                       start_step=steps), 1)[0], batches[steps])
