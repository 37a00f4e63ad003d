import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(1234)
    yield


TINY_VIT = dict(image_shape=(16, 16, 1), patch_size=4, num_layers=2, num_heads=2,
                hidden_dim=16, mlp_dim=32)


def tiny_vit(**overrides):
    import keras_conmim as kc

    return kc.ViT(**{**TINY_VIT, **overrides})


def randomize_weights(layer, seed=0, scale=0.2):
    """Give every weight numpy-random values, the same on every backend."""
    rng = np.random.RandomState(seed)
    for v in layer.weights:
        if v.trainable:
            v.assign((rng.standard_normal(v.shape) * scale).astype(v.dtype))


def uint8_images(n, size=16, channels=1, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, size, size, channels)).astype("uint8")


def to_numpy(x):
    import keras

    return np.asarray(keras.ops.convert_to_numpy(x))


def load_bench_script(name):
    """bench/<name>.py as a module (the bench folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
