import keras
import numpy as np
import pytest

from keras_conmim.models.resize import (interpolation_matrix, resize_encoder,
                                 resize_position_embedding, resize_relative_position_table)
from conftest import randomize_weights, tiny_vit, to_numpy


def test_interpolation_matrix_rows_sum_to_one_and_keep_constants():
    for n_in, n_out, align in [(7, 13, True), (4, 8, False), (8, 4, False), (5, 5, True)]:
        m = interpolation_matrix(n_in, n_out, align)
        assert m.shape == (n_out, n_in)
        np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(interpolation_matrix(5, 5, False), np.eye(5))
    # align_corners maps the ends onto the ends
    m = interpolation_matrix(7, 13, True)
    np.testing.assert_allclose(m[0], np.eye(7)[0], atol=1e-12)
    np.testing.assert_allclose(m[-1], np.eye(7)[-1], atol=1e-12)


def test_relative_table_keeps_cls_entries_and_zero_offset():
    rng = np.random.RandomState(0)
    table = rng.standard_normal((7 * 7 + 3, 2)).astype("float32")
    new = resize_relative_position_table(table, (4, 4), (7, 7))
    assert new.shape == (13 * 13 + 3, 2)
    np.testing.assert_array_equal(new[-3:], table[-3:])
    # offset (0, 0) sits at the centre of both grids and maps onto itself
    np.testing.assert_allclose(new[6 * 13 + 6], table[3 * 7 + 3], atol=1e-6)


def test_absolute_table_resample_keeps_constant_grid():
    pos = np.concatenate([np.full((1, 1, 4), 5.0), np.full((1, 16, 4), 2.0)], 1).astype("float32")
    new = resize_position_embedding(pos, (4, 4), (6, 6))
    assert new.shape == (1, 37, 4)
    np.testing.assert_allclose(new[0, 0], 5.0)
    np.testing.assert_allclose(new[0, 1:], 2.0, atol=1e-6)


@pytest.mark.parametrize("position", ["relative", "absolute", "sincos"])
def test_resized_encoder_runs_and_same_size_is_identity(position):
    vit = tiny_vit(position_embedding=position, use_shared_relative_position_bias=False)
    randomize_weights(vit)
    x = np.random.RandomState(1).standard_normal((2, 16, 16, 1)).astype("float32")
    same = resize_encoder(vit, (16, 16, 1), drop_path_rate=0.1)
    np.testing.assert_allclose(to_numpy(same(x)), to_numpy(vit(x)), atol=1e-6)
    big = resize_encoder(vit, (32, 24, 1))
    assert big.grid_size == (8, 6)
    out = to_numpy(big(np.zeros((2, 32, 24, 1), "float32")))
    assert out.shape == (2, 49, 16) and np.isfinite(out).all()
    np.testing.assert_allclose(to_numpy(big.blocks[0].fc1.kernel), to_numpy(vit.blocks[0].fc1.kernel))
    with pytest.raises(ValueError, match="channels"):
        resize_encoder(vit, (32, 32, 3))
