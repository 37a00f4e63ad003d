"""Rebuild keras_conmim/data/fashion_mnist_small.npz from the full IDX files.

    apt-get install -y dataset-fashion-mnist
    python recipes/make_default_data.py --idx-dir /usr/share/datasets/fashion-mnist

Takes a class-balanced, seeded slice: 400 images per class from the training
set and 100 per class from the test set.
"""

import argparse
import os

import numpy as np

from keras_conmim.data import read_idx  # noqa: E402
from keras_conmim.data.sources import PACKAGE_DATA as DEFAULT_DATA  # noqa: E402


def balanced(labels, per_class, rng):
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
             for c in range(10)]
    return np.sort(np.concatenate(picks))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idx-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    out = {}
    for split, prefix, per_class in (("train", "train", 400), ("test", "t10k", 100)):
        x = read_idx(os.path.join(args.idx_dir, f"{prefix}-images-idx3-ubyte.gz"))
        y = read_idx(os.path.join(args.idx_dir, f"{prefix}-labels-idx1-ubyte.gz"))
        idx = balanced(y, per_class, rng)
        out[f"x_{split}"], out[f"y_{split}"] = x[idx], y[idx].astype("uint8")
    np.savez_compressed(DEFAULT_DATA, **out)
    print(f"wrote {DEFAULT_DATA} ({os.path.getsize(DEFAULT_DATA) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
