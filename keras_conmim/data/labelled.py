"""Labelled image sets for the classification recipes (fine-tuning, probes).

One spec vocabulary with pre-training's `--data`, extended to labels:

    default                 the packaged Fashion-MNIST slice (its own test split)
    idx:PATH                MNIST-format files (a folder with train-* / t10k-*, or the train file)
    dir:PATH                one sub-folder per class: PATH/<class>/*.jpg|png|...
    tfds:NAME[:SPLIT]       a TFDS classification set (label feature "label")

    splits = load_labelled("dir:photos/train", "dir:photos/test", image_size=(32, 32),
                           channels="rgb")
    splits.train, splits.test          # in-memory ImageSources with labels
    splits.class_names                 # from the folder names, sorted
    splits.test_from                   # where the test images came from, in words
    splits.skipped                     # {what: [names]}: unreadable files, empty folders

Without a test spec the test images are the dataset's own test split
(`default`, `idx:` with its t10k files, a TFDS set with a "test" split), else
a class-stratified share of `--data` held out by seed (`TEST_SHARE`), said in
`test_from`. A test spec's classes must be among the training spec's; its
labels are mapped onto the training names.
"""

import contextlib
import dataclasses
import os
import warnings

import numpy as np

from keras_conmim.data.images import IMAGE_EXTENSIONS, channel_conversion, decode_file
from keras_conmim.data.sources import (
    TEST_SHARE, ImageSource, from_arrays, from_idx, from_tfds, load_default,
)

CLASSIFICATION_SPECS = "default, idx:PATH, dir:PATH (one sub-folder per class), tfds:NAME[:SPLIT]"


@dataclasses.dataclass
class LabelledSplits:
    """`train` and `test` sources (in memory, labelled), the class names,
    where the test images came from, and what was skipped while reading
    (`{reason: [file or folder names]}`)."""

    train: ImageSource
    test: ImageSource
    class_names: tuple
    test_from: str
    skipped: dict
    channels_note: str = ""

    def __iter__(self):  # `train, test = splits`, as the earlier (train, test) pair
        return iter((self.train, self.test))

    def skipped_counts(self):
        return {reason: len(names) for reason, names in self.skipped.items() if names}

    def describe(self):
        """Lines for the run's description: data, classes, test source, skips."""
        lines = [f"classes ({len(self.class_names)}): {', '.join(map(str, self.class_names))}",
                 f"train images: {len(self.train)}; test images: {len(self.test)} ({self.test_from})"]
        if self.channels_note:
            lines.append(f"images: {self.channels_note}")
        for reason, names in self.skipped.items():
            if names:
                shown = ", ".join(map(str, names[:3])) + (" ..." if len(names) > 3 else "")
                lines.append(f"skipped {len(names)} ({reason}): {shown}")
        return lines


def load_labelled(spec, test_spec=None, image_size=(28, 28), test_image_size=None, seed=0,
                  resize="crop", channels="keep", download=False):
    """`LabelledSplits` for the classification recipes' `--data` / `--test-data`
    (see the module docstring). Raises `ValueError` starting with the flag
    and spec at fault (`--data SPEC: ...` or `--test-data SPEC: ...`) and
    naming the fix where one cannot work (missing folder, no labels, one
    class, a test class the training data lacks)."""
    sizes = {"train": image_size, "test": test_image_size or image_size}
    kwargs = dict(resize=resize, channels=channels, download=download)
    skipped = {"unreadable image": [], "empty class folder": [], "image outside a class folder": []}
    with _at_fault("--data", spec):
        train = _read(spec, "train", sizes["train"], skipped, **kwargs)
        names = _names(train)
    if test_spec:
        with _at_fault("--test-data", test_spec):
            test = _read(test_spec, "test", sizes["test"], skipped, **kwargs)
            test = _onto(_in_memory(test, skipped, sizes["test"]), names, spec)
        test_from = f"--test-data {test_spec}"
    else:
        with _at_fault("--data", spec):
            test = _own_test_split(spec, sizes["test"], skipped, **kwargs)
            if test is not None:
                test = _onto(test, names, spec)
                test_from = f"the test split of {spec}"
            else:
                train, test = _hold_out(train, sizes, resize, skipped, seed)
                test_from = (f"{TEST_SHARE:.0%} of each class of {spec} held out by seed {seed} "
                             "(--test-data SPEC for a test set of your own)")
    with _at_fault("--data", spec):
        note = channels_note(train, channels)
        train = _in_memory(train, skipped, sizes["train"])
    train.class_names = test.class_names = tuple(names)
    return LabelledSplits(train, test, tuple(names), test_from, skipped, note)


@contextlib.contextmanager
def _at_fault(flag, spec):
    """A reading error as `ValueError("FLAG SPEC: message")`."""
    try:
        yield
    except (ValueError, OSError, ImportError) as e:
        raise ValueError(f"{flag} {spec}: {e}") from None


def channels_note(source, channels):
    """How a file-backed source's images reach the model's channels, in words
    ("" when nothing is converted or the source is in memory)."""
    if source.paths is None or channels == "keep":
        return ""
    for path in source.paths[:20]:  # the first file that decodes
        try:
            return channel_conversion(decode_file(path), channels)
        except Exception:  # noqa: BLE001 -- counted when the source is decoded
            continue
    return ""


def _read(spec, split, size, skipped, resize, channels, download):
    kind, _, arg = spec.partition(":")
    common = dict(image_size=size, resize=resize, channels=channels)
    if spec == "default":
        source = load_default(split, **common)
    elif kind == "idx" and arg:
        source = from_idx(arg, split=split, **common)
    elif kind == "dir" and arg:
        source = _read_class_folders(arg, skipped, **common)
    elif kind == "tfds" and arg:
        name, _, tfds_split = arg.partition(":")
        source = from_tfds(name, split=tfds_split or split, download=download,
                           streaming=False, **common)
        source.class_names = _tfds_label_names(name)
    else:
        raise ValueError(f"{spec!r} is not a labelled image spec. Use one of: "
                         f"{CLASSIFICATION_SPECS}.")
    if source.labels is None:
        raise ValueError("no labels were found; a labelled set needs them (dir: one "
                         "sub-folder per class).")
    if len(np.unique(source.labels)) < 2 and split == "train":
        raise ValueError(f"only one class ({_names(source)[0]}); a classifier needs at least "
                         "two.")
    return source


def _names(source):
    if source.class_names:
        return tuple(source.class_names)
    return tuple(str(k) for k in range(int(source.labels.max()) + 1))


def _read_class_folders(path, skipped, image_size, resize, channels):
    """`dir:PATH`: the first-level sub-folders are the classes (sorted names).
    An empty class folder and an image outside every class folder are
    skipped and counted; a folder with no class sub-folder is an error.
    Returns a file-backed source (`_in_memory` decodes it)."""
    if not os.path.isdir(path):
        raise ValueError(f"folder not found: {path!r}. Pass a folder holding one sub-folder "
                         "per class (PATH/<class>/*.png).")
    entries = sorted(os.scandir(path), key=lambda e: e.name)
    loose = [e.path for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
    skipped["image outside a class folder"].extend(loose)
    files, labels, names = [], [], []
    for entry in (e for e in entries if e.is_dir()):
        found = sorted(os.path.join(root, f) for root, _, fs in os.walk(entry.path) for f in fs
                       if f.lower().endswith(IMAGE_EXTENSIONS))
        if not found:
            skipped["empty class folder"].append(entry.path)
            continue
        files += found
        labels += [len(names)] * len(found)
        names.append(entry.name)
    if not files:
        raise ValueError(f"{path!r} has no class sub-folder with images"
                         f"{' (its images lie directly in it)' if loose else ''}. A labelled "
                         f"folder holds one sub-folder per class: PATH/<class>/*.png "
                         f"({', '.join(IMAGE_EXTENSIONS)}).")
    return ImageSource(image_size, paths=files, labels=np.array(labels, "int64"), resize=resize,
                       channels=channels, class_names=tuple(names))


def _in_memory(source, skipped, image_size=None):
    """`source` decoded once into memory (at `image_size`, default its own);
    files that fail to decode are skipped and counted."""
    if source.images is not None:
        return source
    if image_size is not None and tuple(image_size) != tuple(source.image_size):
        source = ImageSource(image_size, paths=source.paths, labels=source.labels,
                             resize=source.resize, channels=source.channels,
                             class_names=source.class_names)
    keep, images = [], []
    with warnings.catch_warnings():  # each skipped file is counted and named instead
        warnings.simplefilter("ignore")
        for i in range(len(source)):
            image = source.load(i)
            if image is None:
                if source.paths[i] not in skipped["unreadable image"]:
                    skipped["unreadable image"].append(source.paths[i])
                continue
            keep.append(i)
            images.append(image)
    if not images:
        raise ValueError("none of the images could be decoded.")
    out = from_arrays(np.stack(images), source.labels[keep])
    out.class_names = source.class_names
    return out


def _tfds_label_names(name):
    try:
        import tensorflow_datasets as tfds

        feature = tfds.builder(name).info.features["label"]
        return tuple(feature.names)
    except Exception:  # noqa: BLE001 -- names are a nicety; labels are what count
        return None


def _own_test_split(spec, size, skipped, resize, channels, download):
    kind, _, arg = spec.partition(":")
    if spec == "default":
        return load_default("test", image_size=size, resize=resize, channels=channels)
    if kind == "idx":
        try:
            return from_idx(arg, split="test", image_size=size, resize=resize, channels=channels)
        except (ValueError, OSError):
            return None  # a lone train file: held out instead
    if kind == "tfds":
        name, _, train_split = arg.partition(":")
        if train_split and train_split != "train":
            return None
        try:
            return _read(f"tfds:{name}:test", "test", size, skipped, resize, channels, download)
        except Exception:  # noqa: BLE001 -- no test split (tfds raises its own types): hold out
            return None
    return None


def _onto(test, names, spec):
    """`test` with its labels renumbered onto the training class names (of
    `spec`)."""
    test_names = _names(test)
    present = set(np.unique(test.labels).tolist())
    unknown = [n for k, n in enumerate(test_names) if n not in names and k in present]
    if unknown:
        raise ValueError(f"class(es) {', '.join(unknown)} are not among the training classes "
                         f"of {spec} ({', '.join(names)}).")
    mapping = np.array([names.index(n) if n in names else -1 for n in test_names], "int64")
    test.labels = mapping[test.labels]
    return test


def _hold_out(train, sizes, resize, skipped, seed):
    """(train, test): `TEST_SHARE` of each class (at least one image) drawn by
    `seed` becomes the test set, decoded at the test size."""
    labels = train.labels
    rng = np.random.default_rng([seed, 17])
    held = []
    for k in np.unique(labels):
        rows = np.flatnonzero(labels == k)
        if len(rows) < 2:
            raise ValueError(f"class {_names(train)[k]} has {len(rows)} image; holding out a "
                             "test share needs at least 2 per class. Pass --test-data.")
        held.extend(rng.choice(rows, max(1, int(round(TEST_SHARE * len(rows)))), replace=False))
    held = np.sort(np.asarray(held))
    kept = np.setdiff1d(np.arange(len(train)), held)
    test, out = train.subset(held), train.subset(kept)
    if test.images is not None and tuple(sizes["test"]) != tuple(test.image_size):
        from keras_conmim.data.images import prepare

        test = from_arrays(np.stack([prepare(img, tuple(sizes["test"]), resize, "keep")
                                     for img in test.images]), test.labels)
    return out, _in_memory(test, skipped, sizes["test"])
