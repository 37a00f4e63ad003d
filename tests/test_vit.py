import os

import keras
import numpy as np
import pytest

import keras_conmim as kc
from conftest import TINY_VIT, randomize_weights, tiny_vit, to_numpy
from numpy_reference import relative_index, vit_forward, weights_by_name
from keras_conmim.layers import relative_position_index


def _images(n=2, shape=(16, 16, 1), seed=0):
    return np.random.RandomState(seed).standard_normal((n,) + shape).astype("float32")


@pytest.mark.parametrize("overrides", [
    {},
    dict(image_shape=(16, 24, 3)),
    dict(position_embedding="absolute"),
    dict(position_embedding="sincos"),
    dict(use_shared_relative_position_bias=False),
    dict(layer_scale_init_value=None),
])
def test_forward_matches_numpy_reference(overrides):
    vit = tiny_vit(**overrides)
    randomize_weights(vit)
    images = _images(shape=vit.image_shape)
    mask = np.random.RandomState(1).rand(2, vit.num_patches) < 0.5
    expected = vit_forward(weights_by_name(vit), vit.get_config(), images.astype("float64"), mask)
    tokens = to_numpy(vit(images, patch_mask=mask))
    assert tokens.shape == (2, vit.num_patches + 1, vit.hidden_dim)
    np.testing.assert_allclose(tokens, expected, atol=2e-4, rtol=1e-4)


def test_relative_index_matches_spec_formula():
    for grid in [(3, 3), (2, 4), (14, 14)]:
        np.testing.assert_array_equal(relative_position_index(grid), relative_index(*grid))


def test_mask_token_replaces_masked_patches_only():
    vit = tiny_vit(num_layers=1)
    randomize_weights(vit)
    images = _images()
    mask = np.zeros((2, 16), bool)
    mask[0, 3] = True
    other = images.copy()
    other[0, 0:4, 12:16] += 5.0  # patch 3 of image 0 (row 0, col 3)
    a, b = to_numpy(vit(images, patch_mask=mask)), to_numpy(vit(other, patch_mask=mask))
    np.testing.assert_allclose(a, b, atol=1e-5)  # masked content is invisible
    c = to_numpy(vit(other))
    assert np.abs(c - a).max() > 1e-3


def test_release_init():
    vit = tiny_vit(num_layers=3, hidden_dim=64, mlp_dim=128, num_heads=2)
    w = weights_by_name(vit)
    assert np.all(w["rel_pos_bias/relative_position_bias_table"] == 0)
    np.testing.assert_allclose(w["blocks_0/gamma_1"], 0.1)
    for i in range(3):
        # Output projections of block l (1-based) have std 0.02 / sqrt(2 l).
        std = w[f"blocks_{i}/attn/proj_kernel"].std()
        assert abs(std / (0.02 / np.sqrt(2 * (i + 1))) - 1) < 0.25, (i, std)
    assert abs(w["blocks_0/attn/qkv_kernel"].std() / 0.02 - 1) < 0.15


def test_drop_path_only_in_training():
    vit = tiny_vit(drop_path_rate=0.5)
    images = _images(8)
    np.testing.assert_allclose(to_numpy(vit(images)), to_numpy(vit(images, training=False)))
    assert np.abs(to_numpy(vit(images, training=True)) - to_numpy(vit(images))).max() > 1e-4


def test_pool_and_intermediates():
    vit = tiny_vit()
    features = vit.forward_features(_images())
    assert len(features["blocks"]) == 2
    np.testing.assert_allclose(to_numpy(vit.pool(features["tokens"])),
                               to_numpy(features["patch_tokens"]).mean(1), atol=1e-6)
    np.testing.assert_allclose(to_numpy(vit.pool(features["tokens"], "cls")),
                               to_numpy(features["cls_token"]))
    with pytest.raises(ValueError, match="mean"):
        vit.pool(features["tokens"], "max")


@pytest.mark.parametrize("name", list(kc.PRESETS))
def test_presets_build_config(name):
    config = kc.PRESETS[name]["config"]
    assert config["image_shape"][0] % config["patch_size"] == 0
    if config["image_shape"][0] <= 64:
        vit = kc.ViT.from_preset(name)
        assert vit.get_config()["hidden_dim"] == config["hidden_dim"]


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match="vit_mini_p4_28"):
        kc.ViT.from_preset("vit_huge")


@pytest.mark.parametrize("kwargs,match", [
    (dict(patch_size=5), "patch_size=5 must divide"),
    (dict(image_shape=(16, 16, 2)), "1 or 3"),
    (dict(num_heads=3), "num_heads"),
    (dict(position_embedding="rope"), "relative, absolute, sincos"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_vit(**kwargs)


def test_mask_without_mask_token_errors():
    vit = tiny_vit(use_mask_token=False)
    with pytest.raises(ValueError, match="use_mask_token"):
        vit(_images(), patch_mask=np.ones((2, 16), bool))


def test_config_round_trip():
    vit = tiny_vit(position_embedding="absolute", drop_path_rate=0.1)
    clone = kc.ViT.from_config(vit.get_config())
    assert clone.get_config() == vit.get_config()


@pytest.mark.parametrize("overrides", [{}, dict(use_shared_relative_position_bias=False)])
def test_keras_file_round_trip(tmp_path, overrides):
    vit = tiny_vit(**overrides)
    randomize_weights(vit)
    path = os.path.join(tmp_path, "vit.keras")
    vit.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, kc.ViT)
    images = _images()
    np.testing.assert_array_equal(to_numpy(loaded(images)), to_numpy(vit(images)))


def test_no_weight_decay_and_layer_groups():
    vit = tiny_vit()
    names = {v.path.split("/", 1)[1] for v in vit.no_weight_decay_variables()}
    assert {"cls_token", "mask_token", "rel_pos_bias/relative_position_bias_table",
            "blocks_0/attn/q_bias", "norm/gamma"} <= names
    assert "blocks_0/attn/qkv_kernel" not in names
    groups = vit.layer_groups()
    assert len(groups) == TINY_VIT["num_layers"] + 2
    assert sum(len(g) for g in groups) == len(vit.weights)
