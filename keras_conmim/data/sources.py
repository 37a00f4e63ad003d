"""Image sources: arrays, IDX files, folders, TFDS and the packaged default.

Each function returns an `ImageSource`, which `.dataset(...)` turns into
uint8 batches at a fixed image size: a `tf.data.Dataset` where TensorFlow is
installed, else a `keras.utils.PyDataset` (numpy only, for JAX-only boxes).
Both walk the same seeded order: epoch e is permutation (seed, e), so a run
resumed at step s sees exactly the batches an uninterrupted run would.
"""

import functools
import os
import warnings

import numpy as np

from keras_conmim.data.idx import idx_images_path, read_idx
from keras_conmim.data.images import (
    IMAGE_EXTENSIONS, check_policies, decode_file, prepare,
)

# The share of a set held out for testing where it has no test split of its own
# (`data.labelled`: of each class; the downstream recipes: of the images).
TEST_SHARE = 0.2
PACKAGE_DATA = os.path.join(os.path.dirname(__file__), "fashion_mnist_small.npz")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


class ImageSource:
    """A fixed-size collection of images and optional labels.

    Either in memory (`images`, uint8 `[n, H, W, C]`, already at
    `image_size`), on disk (`paths`, decoded per batch) or in a random-access
    record store (`records`: `len()` and `[i]` -> a dict holding the image
    under `image_key`, e.g. a TFDS ArrayRecord data source; read per batch).
    Labels (int) are kept for probes; pre-training ignores them.
    """

    def __init__(self, image_size, images=None, paths=None, labels=None,
                 resize="crop", channels="keep", class_names=None, skipped=(), records=None,
                 image_key="image"):
        self.image_size = check_policies(image_size, resize, channels)
        self.images, self.paths = images, paths
        self.records, self.image_key = records, image_key
        self.labels = None if labels is None else np.asarray(labels)
        self.resize, self.channels = resize, channels
        self.class_names = class_names
        self.skipped = list(skipped)  # files found unreadable when listed
        self.failed_files = []  # files that failed to decode during training
        self.failed_at_decode = 0

    def __len__(self):
        if self.images is not None:
            return len(self.images)
        return len(self.paths) if self.paths is not None else len(self.records)

    @property
    def num_channels(self):
        if self.images is not None:
            return self.images.shape[-1]
        if self.channels != "keep":
            return 3 if self.channels == "rgb" else 1
        for index in range(len(self)):  # the first image that decodes
            image = self.load(index)
            if image is not None:
                return image.shape[-1]
        raise ValueError("None of the source's images can be decoded.")

    def load(self, index):
        """uint8 image `index`, at `image_size` (None if it cannot be decoded)."""
        if self.images is not None:
            return self.images[index]
        try:
            image = (decode_file(self.paths[index]) if self.paths is not None
                     else np.asarray(self.records[int(index)][self.image_key]))
            return prepare(image, self.image_size, self.resize, self.channels)
        except Exception as e:  # noqa: BLE001 -- any decoder failure means "skip it"
            name = self.paths[index] if self.paths is not None else f"record {int(index)}"
            self.failed_at_decode += 1
            if name not in self.failed_files:
                self.failed_files.append(name)
                if len(self.failed_files) <= 10:
                    warnings.warn(f"Skipped an image that cannot be decoded: {name} "
                                  f"({type(e).__name__}: {e}); its batch takes the next image.",
                                  stacklevel=2)
            return None

    def order(self, seed, epoch):
        """The epoch's permutation of indices, from (seed, epoch) alone."""
        return np.random.default_rng([seed, epoch]).permutation(len(self))

    def batch_indices(self, batch_size, seed, step, shuffle=True):
        """Indices of global batch `step` (epochs of len // batch_size steps)."""
        steps = len(self) // batch_size
        if steps < 1:
            raise ValueError(
                f"batch_size={batch_size} is larger than the {len(self)} images in the source.")
        epoch, i = divmod(step, steps)
        order = self.order(seed, epoch) if shuffle else np.arange(len(self))
        return order[i * batch_size: (i + 1) * batch_size]

    def shard_indices(self, batch_size, seed, step, shuffle=True, num_shards=1, shard_index=0):
        """This host's rows of global batch `step`: the global batch is
        `batch_size * num_shards` images (`batch_indices`), host
        `shard_index` reads rows `[shard_index * batch_size, ...)`. The hosts
        together read exactly the one-host batch, so a run does not depend
        on its host count."""
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index {shard_index} is not in [0, {num_shards}).")
        rows = self.batch_indices(batch_size * num_shards, seed, step, shuffle)
        return rows[shard_index * batch_size: (shard_index + 1) * batch_size]

    def batch(self, indices):
        """Stack a batch; an undecodable file is replaced by the next good one."""
        if self.images is not None:
            return self.images[indices]
        out, probe = [], int(indices[-1]) + 1
        for index in indices:
            image = self.load(int(index))
            while image is None:  # skipped and counted; keep the batch full
                image = self.load(probe % len(self))
                probe += 1
            out.append(image)
        return np.stack(out)

    def load_or_next(self, index):
        """Image `index`, or (skipped and counted) the next one that decodes."""
        for offset in range(len(self)):
            image = self.load((index + offset) % len(self))
            if image is not None:
                return image
        raise ValueError("None of the source's images can be decoded.")

    def steps_per_epoch(self, batch_size):
        return len(self) // batch_size

    def subset(self, indices):
        """A new `ImageSource` holding only `indices` (images or paths, and
        their labels), in that order."""
        indices = np.asarray(indices, "int64")
        images = self.images[indices] if self.images is not None else None
        paths = [self.paths[i] for i in indices] if self.paths is not None else None
        if self.records is not None:
            raise ValueError("subset() of a streaming record source: read it in memory "
                             "(from_tfds(..., streaming=False)) to take a labelled subset.")
        labels = self.labels[indices] if self.labels is not None else None
        return ImageSource(self.image_size, images=images, paths=paths, labels=labels,
                           resize=self.resize, channels=self.channels,
                           class_names=self.class_names)

    def labelled_subset(self, per_class, seed=0):
        """`subset(class_balanced_indices(labels, per_class, seed))`: the
        few-label split of a semi-supervised evaluation."""
        if self.labels is None:
            raise ValueError("This source has no labels: a labelled subset needs them.")
        return self.subset(class_balanced_indices(self.labels, per_class, seed))


    def dataset(self, batch_size, seed=0, start_step=0, shuffle=True, backend="auto",
                prefetch=4, workers=2, num_shards=1, shard_index=0, decoder="auto"):
        """Endless uint8 batches from global step `start_step` on.

        `backend`: `"tf"` (tf.data), `"numpy"` (PyDataset) or `"auto"`
        (tf.data when TensorFlow imports). Pass `steps_per_epoch` to fit.
        Multi-host: `batch_size` is this host's share and `num_shards` /
        `shard_index` the host count / index (`distribute.Plan.shard()`);
        each host reads only its rows (`shard_indices`).
        `decoder` (image files with `backend="tf"`): `"tf"` decodes and resizes
        with `tf.io` / `tf.image` inside tf.data, in parallel
        (`data.tf_decode`); `"pil"` with PIL in `tf.numpy_function`; `"auto"`:
        tf when every file is a format tf.io reads.
        """
        if decoder not in ("auto", "tf", "pil"):
            raise ValueError(f"decoder must be 'auto', 'tf' or 'pil', received {decoder!r}.")
        if num_shards > 1 and len(self) // (batch_size * num_shards) < 1:
            raise ValueError(f"A global batch of {batch_size} x {num_shards} hosts is larger "
                             f"than the {len(self)} images in the source.")
        indices = functools.partial(self.shard_indices, batch_size, seed, shuffle=shuffle,
                                    num_shards=num_shards, shard_index=shard_index)
        if backend == "auto":
            backend = "tf" if _has_tensorflow() else "numpy"
        if backend == "tf":
            if self.paths is not None and decoder != "pil":
                from keras_conmim.data import tf_decode

                if tf_decode.can_decode(self.paths):
                    return tf_decode.file_dataset(self.paths, self.image_size, self.resize,
                                                  self.num_channels, batch_size, indices,
                                                  start_step, prefetch, self.load_or_next)
                if decoder == "tf":
                    raise ValueError("decoder='tf': some files are in a format tf.io cannot "
                                     f"decode (it reads {', '.join(tf_decode.TF_EXTENSIONS)}); "
                                     "use decoder='pil' or 'auto'.")
            return _tf_dataset(self, batch_size, indices, start_step, prefetch)
        if backend == "numpy":
            return UInt8Batches(self, batch_size, indices, start_step, workers)
        raise ValueError(f"backend must be 'auto', 'tf' or 'numpy', received {backend!r}.")


def class_balanced_indices(labels, per_class, seed=0):
    """`per_class` indices of every class in `labels`, drawn without
    replacement from (seed) alone, sorted. The same (labels, per_class, seed)
    always give the same subset, on every backend and machine.

    Raises `ValueError` naming the class when one has fewer than `per_class`
    examples."""
    labels = np.asarray(labels).astype("int64")
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, received {per_class}.")
    classes, counts = np.unique(labels, return_counts=True)
    short = [(int(c), int(n)) for c, n in zip(classes, counts) if n < per_class]
    if short:
        raise ValueError(
            f"{per_class} labels per class asked for, but class(es) "
            + ", ".join(f"{c} ({n} images)" for c, n in short)
            + f" have fewer. Use at most {int(counts.min())} per class.")
    rng = np.random.default_rng([seed, per_class])
    chosen = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in classes]
    return np.sort(np.concatenate(chosen))


def _has_tensorflow():
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def _tf_dataset(source, batch_size, indices, start_step, prefetch):
    import tensorflow as tf

    h, w = source.image_size
    c = source.num_channels
    steps = tf.data.Dataset.counter(start=start_step)
    if source.images is not None:
        images = tf.constant(source.images)

        def gather(step):
            idx = tf.numpy_function(
                lambda s: indices(int(s)).astype("int64"),
                [step], tf.int64)
            return tf.reshape(tf.gather(images, idx), (batch_size, h, w, c))
    else:
        def gather(step):
            batch = tf.numpy_function(
                lambda s: source.batch(indices(int(s))),
                [step], tf.uint8)
            return tf.reshape(batch, (batch_size, h, w, c))

    ds = steps.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(prefetch)


class UInt8Batches:
    """Numpy-only endless batches as a `keras.utils.PyDataset` (built lazily
    so that importing this module does not import keras)."""

    def __new__(cls, source, batch_size, indices, start_step, workers):
        import keras

        class _Batches(keras.utils.PyDataset):
            def __init__(self):
                super().__init__(workers=workers, use_multiprocessing=False)
                self.epoch_steps = source.steps_per_epoch(batch_size)

            @property
            def num_batches(self):
                return None  # endless: fit() needs steps_per_epoch

            def __getitem__(self, i):
                step = start_step + i
                return (source.batch(indices(step)),)

        return _Batches()


# ---- the sources -------------------------------------------------------------


def from_arrays(x, y=None, image_size=None, resize="crop", channels="keep"):
    """Images already in memory: uint8 `[n, H, W]` or `[n, H, W, C]`."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise ValueError(f"Expected images [n, H, W] or [n, H, W, C] with C in 1, 3, 4; received shape {x.shape}.")
    if len(x) == 0:
        raise ValueError("No images: the array is empty.")
    if y is not None and len(y) != len(x):
        raise ValueError(f"{len(x)} images but {len(y)} labels.")
    size = check_policies(image_size or x.shape[1:3], resize, channels)
    if x.dtype != np.uint8:
        raise ValueError(
            f"Images must be uint8 in [0, 255], received dtype {x.dtype}. Convert with "
            "np.clip(x, 0, 255).astype('uint8') (or x * 255 for [0, 1] floats).")
    if tuple(x.shape[1:3]) != size or channels != "keep" or x.shape[-1] == 4:
        x = np.stack([prepare(img, size, resize, channels) for img in x])
    return ImageSource(size, images=x, labels=y, resize=resize, channels=channels)


def from_idx(path, labels_path=None, split="train", **kwargs):
    """MNIST-format IDX images (gzipped or not); labels from `labels_path`,
    or guessed as the sibling `*labels-idx1-ubyte*` file when it exists.
    `path`: an images file, or a folder holding MNIST's file names, whose
    `split` ("train" or "test") is read (`idx.idx_images_path`)."""
    path = idx_images_path(path, split)
    x = read_idx(path)
    if labels_path is None:
        guess = path.replace("images-idx3", "labels-idx1")
        labels_path = guess if guess != path and os.path.isfile(guess) else None
    y = read_idx(labels_path).astype("int64") if labels_path else None
    return from_arrays(x, y, **kwargs)


def load_default(split="train", **kwargs):
    """The packaged Fashion-MNIST slice as an `ImageSource` (28 x 28 gray
    unless `image_size` / `channels` say otherwise)."""
    x, y = load_default_data(split)
    source = from_arrays(x, y, **kwargs)
    source.class_names = FASHION_MNIST_CLASSES
    return source


def load_default_data(split="train"):
    """The packaged Fashion-MNIST slice as numpy: `(images, labels)`.

    `images` is uint8 `[n, 28, 28, 1]`, `labels` int64 `[n]`. The train split
    holds 400 images per class from Fashion-MNIST's training set (4,000), the
    test split 100 per class from its test set (1,000). Fashion-MNIST is
    (c) Zalando SE, MIT licence (see `data/FASHION_MNIST_LICENSE`).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', received {split!r}.")
    with np.load(PACKAGE_DATA) as data:
        return data[f"x_{split}"][..., None], data[f"y_{split}"].astype("int64")


def from_directory(path, image_size, labels="inferred", resize="crop", channels="rgb",
                   verify=True):
    """Every jpg/png/bmp/webp under `path`, recursively.

    `labels="inferred"`: the first-level sub-folder names are the classes
    (sorted); `None`: unlabeled. Files that cannot be opened are skipped and
    counted (`source.skipped`), with one warning naming a few of them; with
    `verify=True` each file's header and structure are checked up front, and
    a file that still fails to decode later is replaced in its batch and
    counted in `source.failed_at_decode`.
    """
    if not os.path.isdir(path):
        raise ValueError(f"Image folder not found: {path!r}. Pass an existing directory.")
    files = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(path) for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise ValueError(
            f"No images in {path!r} (looked recursively for {', '.join(IMAGE_EXTENSIONS)}).")
    skipped = []
    if verify:
        from keras_conmim.data.images import _pil

        Image = _pil()
        good = []
        for f in files:
            try:
                with Image.open(f) as img:
                    img.verify()
                good.append(f)
            except Exception:  # noqa: BLE001
                skipped.append(f)
        files = good
        if skipped:
            warnings.warn(
                f"Skipped {len(skipped)} unreadable image file(s) in {path!r}, e.g. "
                f"{', '.join(os.path.relpath(s, path) for s in skipped[:3])}.", stacklevel=2)
        if not files:
            raise ValueError(f"None of the image files in {path!r} could be read.")
    y, class_names = None, None
    if labels == "inferred":
        top = [os.path.relpath(f, path).split(os.sep) for f in files]
        if all(len(parts) > 1 for parts in top):
            class_names = sorted({parts[0] for parts in top})
            index = {name: i for i, name in enumerate(class_names)}
            y = np.array([index[parts[0]] for parts in top], "int64")
    elif labels is not None:
        raise ValueError(f"labels must be 'inferred' or None, received {labels!r}.")
    return ImageSource(image_size, paths=files, labels=y, resize=resize, channels=channels,
                       class_names=class_names, skipped=skipped)


def from_tfds(name, split="train", data_dir=None, download=True, image_size=None,
              resize="crop", channels="keep", image_key="image", label_key="label",
              streaming="auto"):
    """A TensorFlow Datasets split.

    `streaming`: `True` reads records lazily by index from the prepared
    ArrayRecord files (`builder.as_data_source`): nothing is held in memory,
    any (seed, epoch) order and host shard is read directly, so resume stays
    exact; labels are not read (pre-training needs none). `False` reads the
    split into memory (with labels). `"auto"`: streaming when the dataset was
    prepared as ArrayRecord, else in memory. Prepare a large dataset as
    ArrayRecord once: `tfds.builder(name, data_dir=..., file_format=
    "array_record").download_and_prepare()`.

    `download=True` downloads and prepares a dataset that is not prepared;
    `download=False` fails at once, saying how to prepare it (offline: a
    `data_dir` where it was prepared). Needs `tensorflow-datasets`.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError("from_tfds needs tensorflow-datasets: pip install tensorflow-datasets") from e
    if streaming not in ("auto", True, False):
        raise ValueError(f"streaming must be 'auto', True or False, received {streaming!r}.")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # noqa: BLE001 -- tfds raises its own not-found types
        raise ValueError(f"tfds has no dataset {name!r} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else e}).") from e
    if not builder.is_prepared():
        if not download:
            raise ValueError(
                f"tfds dataset {name!r} is not prepared in {builder.data_dir_root}. Prepare it "
                f"once on a machine with internet: `tfds build {name} --data_dir DIR` (add "
                "--file_format array_record to stream it), then set TFDS_DATA_DIR=DIR (or "
                "data_dir=DIR); or let this download it: download=True (recipes: "
                "--tfds-download).")
        builder.download_and_prepare()
    if streaming is not False:
        array_record = str(builder.info.file_format).lower().endswith("array_record")
        if array_record:
            records = builder.as_data_source(split=split)
            if len(records) == 0:
                raise ValueError(f"tfds dataset {name!r} split {split!r} is empty.")
            size = image_size or np.asarray(records[0][image_key]).shape[:2]
            return ImageSource(size, records=records, image_key=image_key, resize=resize,
                               channels=channels)
        if streaming is True:
            raise ValueError(
                f"tfds dataset {name!r} is stored as {builder.info.file_format}, which has no "
                "random access: prepare it as ArrayRecord (tfds.builder(name, data_dir=..., "
                "file_format='array_record').download_and_prepare()) or pass streaming=False "
                "to read it into memory.")
    ds = builder.as_dataset(split=split)
    xs, ys = [], []
    for example in tfds.as_numpy(ds):
        xs.append(np.asarray(example[image_key]))
        if label_key in example:
            ys.append(int(example[label_key]))
    if not xs:
        raise ValueError(f"tfds dataset {name!r} split {split!r} is empty.")
    size = image_size or xs[0].shape[:2]
    x = np.stack([prepare(img, check_policies(size, resize, channels), resize, channels) for img in xs])
    return from_arrays(x, np.array(ys) if len(ys) == len(xs) else None)


def load_splits(spec, image_size=None, test_image_size=None, **kwargs):
    """`(train, test)` labelled sources for the evaluation recipes' `--data`:
    `default` (the packaged slice) or `idx:PATH` (a folder of MNIST-format
    files, or the train images file with its `t10k-` sibling beside it).
    `test_image_size` (default: `image_size`) loads the test split at another
    size; `kwargs` go to the sources (`resize`, `channels`)."""
    kind, _, path = spec.partition(":")
    sizes = {"train": image_size, "test": test_image_size or image_size}
    if spec == "default":
        return tuple(load_default(split, image_size=sizes[split], **kwargs)
                     for split in ("train", "test"))
    if kind == "idx" and path:
        return tuple(from_idx(path, split=split, image_size=sizes[split], **kwargs)
                     for split in ("train", "test"))
    raise ValueError(f"--data {spec!r}: use default or idx:PATH (a folder of MNIST-format "
                     "files, or the train images file).")


def parse_data_spec(spec, image_size, channels="keep", resize="crop", download=False):
    """The recipe's `--data`: `default`, `idx:PATH`, `dir:PATH`, `tfds:NAME`, or
    the images of a detection / segmentation set (`coco:ANNOTATIONS.json
    [:IMAGE_DIR]`, `masks:IMAGE_DIR:MASK_DIR`; `data.dense`).
    `download`: `from_tfds(download=...)`; off, an unprepared TFDS dataset is
    an error saying how to prepare it."""
    kind, _, arg = spec.partition(":")
    kwargs = dict(image_size=image_size, channels=channels, resize=resize)
    if kind == "default" and not arg:
        return load_default(**kwargs)
    if kind == "idx" and arg:
        return from_idx(arg, **kwargs)
    if kind == "dir" and arg:
        return from_directory(arg, **kwargs)
    if kind == "tfds" and arg:
        return from_tfds(arg, download=download, **kwargs)
    if kind in ("coco", "masks") and arg:
        # the image side of a detection / segmentation set; its labels are unused
        from keras_conmim.data.dense import image_paths

        return ImageSource(image_size, paths=image_paths(spec), resize=resize, channels=channels)
    raise ValueError(
        f"Unknown --data {spec!r}. Use one of: default, idx:PATH, dir:PATH, tfds:NAME, "
        "coco:ANNOTATIONS.json[:IMAGE_DIR], masks:IMAGE_DIR:MASK_DIR.")
