"""MNIST-format IDX files (Fashion-MNIST, MNIST, KMNIST), numpy only."""

import gzip
import os

import numpy as np

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


_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def idx_images_path(path, split="train"):
    """The images file of `split` ("train" or "test") for `path`, which is
    either a folder holding MNIST's file names (`train-images-idx3-ubyte[.gz]`,
    `t10k-images-idx3-ubyte[.gz]`) or one images file: the train file, whose
    `t10k-` sibling is the test split. Every `idx:` spec of the recipes goes
    through here, so a folder and a file work everywhere."""
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', received {split!r}.")
    prefix = _SPLIT_PREFIX[split]
    if os.path.isdir(path):
        for name in (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-images-idx3-ubyte"):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise ValueError(f"No {prefix}-images-idx3-ubyte[.gz] in the folder {path!r}: pass the "
                         "folder holding the MNIST-format files, or one images file.")
    if not os.path.isfile(path):
        raise ValueError(f"IDX file or folder not found: {path!r}.")
    if split == "train":
        return path
    name = os.path.basename(path)
    sibling = os.path.join(os.path.dirname(path), name.replace("train-images", "t10k-images"))
    if sibling == path or not os.path.isfile(sibling):
        raise ValueError(f"No test split beside {path!r}: expected a t10k-images-idx3-ubyte "
                         "file next to it (or pass the folder holding both).")
    return sibling
