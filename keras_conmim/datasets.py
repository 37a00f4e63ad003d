"""Data that ships with the package, and the IDX reader it was made with.

Numpy only: a JAX-only GPU box can pre-train on it without TensorFlow.
"""

import gzip
import os

import numpy as np

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
DEFAULT_DATA = os.path.join(DATA_DIR, "fashion_mnist_small.npz")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4",
               0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    """Read an MNIST-format IDX file (gzipped or not) into a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number).")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: header says shape {shape} "
            f"({expected} bytes), file holds {len(data) - offset}."
        )
    return np.frombuffer(data, dtype, offset=offset).reshape(shape)


def load_default_data(split="train"):
    """The packaged Fashion-MNIST slice: `(images, labels)`.

    `images` is uint8 `[n, 28, 28, 1]`, `labels` int64 `[n]`. The train split
    holds 400 images per class from Fashion-MNIST's training set (4,000), the
    test split 100 per class from its test set (1,000). Fashion-MNIST is
    (c) Zalando SE, MIT licence (see `data/FASHION_MNIST_LICENSE`).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', received {split!r}.")
    with np.load(DEFAULT_DATA) as data:
        return data[f"x_{split}"][..., None], data[f"y_{split}"].astype("int64")
