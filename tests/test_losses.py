import numpy as np
import pytest

import keras_conmim as kc
from conftest import to_numpy
from numpy_reference import info_nce


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_patch_info_nce_matches_numpy(temperature):
    rng = np.random.RandomState(0)
    q = rng.standard_normal((3, 9, 5)).astype("float32")
    k = rng.standard_normal((3, 9, 5)).astype("float32")
    mask = rng.rand(3, 9) < 0.5
    mask[:, 0] = True
    expected_loss, expected_acc = info_nce(q.astype("float64"), k.astype("float64"), mask, temperature)
    loss = to_numpy(kc.patch_info_nce(q, k, mask, temperature=temperature))
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    acc = to_numpy(kc.lookup_accuracy(q, k, mask))
    np.testing.assert_allclose(acc, expected_acc, atol=1e-7)


def test_only_masked_patches_count():
    rng = np.random.RandomState(1)
    q = rng.standard_normal((2, 4, 3)).astype("float32")
    k = rng.standard_normal((2, 4, 3)).astype("float32")
    mask = np.array([[1, 0, 0, 0], [0, 0, 0, 0]], bool)
    changed = q.copy()
    changed[0, 1:] = 7.0  # unmasked rows of image 0
    changed[1] = -3.0  # no masked rows in image 1
    a = to_numpy(kc.patch_info_nce(q, k, mask))
    b = to_numpy(kc.patch_info_nce(changed, k, mask))
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_perfect_lookup():
    rng = np.random.RandomState(2)
    k = rng.standard_normal((2, 16, 8)).astype("float32")
    mask = np.ones((2, 16), bool)
    assert to_numpy(kc.lookup_accuracy(k, k, mask)) == 1.0
    # Identical features: the loss is well below the uniform log(N).
    assert to_numpy(kc.patch_info_nce(k, k, mask)) < np.log(16) / 2


def test_low_precision_inputs_give_float32_loss():
    rng = np.random.RandomState(3)
    q = rng.standard_normal((2, 4, 8)).astype("float16")
    loss = kc.patch_info_nce(q, q, np.ones((2, 4), bool))
    assert str(to_numpy(loss).dtype) == "float32"
