import keras
import numpy as np
import pytest

import keras_conmim as kc
from conftest import TINY_VIT, randomize_weights, tiny_vit, to_numpy
from model_checks import check_preset
from numpy_reference import relative_index, vit_forward, weights_by_name
from keras_conmim.models.layers import relative_position_index


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


# timm's trunc_normal_(std=s, a=-s, b=s): a standard normal cut at +-1 has
# std sqrt(1 - 2 phi(1) / (Phi(1) - Phi(-1))) = 0.5396.
ONE_STD_CUT = 0.5396


def _check_release_truncated(values, std, name):
    values = np.asarray(values, "float64").ravel()
    assert np.abs(values).max() <= std * (1 + 1e-5), (name, np.abs(values).max(), std)
    # Filled to the bound, not inside a narrower one; centred; the cut's std.
    assert np.abs(values).max() > 0.95 * std, name
    assert abs(values.mean()) < 0.1 * std, name
    assert abs(values.std() / (ONE_STD_CUT * std) - 1) < 0.08, (name, values.std() / std)


def test_release_init_every_weight_group():
    """modeling_pretrain.py's `_init_weights` + `fix_init_weight`: every
    Linear, the patch Conv2d, CLS and mask tokens and the projector's Linears
    are N(0, 0.02) cut at one std, biases 0; LayerNorm 1/0; the shared bias
    table 0; LayerScale 0.1; the output projections of block l (from 1) are
    divided by sqrt(2 l)."""
    num_layers = 4
    vit = kc.ViT(image_shape=(32, 32, 3), patch_size=4, num_layers=num_layers, num_heads=4,
                 hidden_dim=64, mlp_dim=256)
    w = weights_by_name(vit)
    _check_release_truncated(w["patch_embed/proj/kernel"], 0.02, "patch conv")
    np.testing.assert_array_equal(w["patch_embed/proj/bias"], 0)
    # Tokens have only 64 values each: the bound is what they must meet.
    for name in ("cls_token", "mask_token"):
        assert np.abs(w[name]).max() <= 0.02 and w[name].std() > 0, name
    np.testing.assert_array_equal(w["rel_pos_bias/relative_position_bias_table"], 0)
    for i in range(num_layers):
        scaled = 0.02 / np.sqrt(2.0 * (i + 1))
        b = f"blocks_{i}"
        _check_release_truncated(w[f"{b}/attn/qkv_kernel"], 0.02, f"{b} qkv")
        _check_release_truncated(w[f"{b}/fc1/kernel"], 0.02, f"{b} fc1")
        _check_release_truncated(w[f"{b}/attn/proj_kernel"], scaled, f"{b} proj")
        _check_release_truncated(w[f"{b}/fc2/kernel"], scaled, f"{b} fc2")
        for bias in ("attn/q_bias", "attn/v_bias", "attn/proj_bias", "fc1/bias", "fc2/bias",
                     "norm1/beta", "norm2/beta"):
            np.testing.assert_array_equal(w[f"{b}/{bias}"], 0)
        for gamma in ("norm1/gamma", "norm2/gamma"):
            np.testing.assert_array_equal(w[f"{b}/{gamma}"], 1)
        np.testing.assert_allclose(w[f"{b}/gamma_1"], 0.1)
        np.testing.assert_allclose(w[f"{b}/gamma_2"], 0.1)
    np.testing.assert_array_equal(w["norm/gamma"], 1)
    np.testing.assert_array_equal(w["norm/beta"], 0)

    head = kc.ProjectionHead(256, 64)
    head.build((None, 65, 64))
    for i, dense in enumerate(head.dense_layers):
        assert not dense.use_bias
        _check_release_truncated(to_numpy(dense.kernel), 0.02, f"projector dense_{i}")


def test_bounded_truncated_normal():
    from keras_conmim.models.layers import BoundedTruncatedNormal

    values = to_numpy(BoundedTruncatedNormal(stddev=1.0, bound=2.0, seed=3)((200, 500)))
    assert np.abs(values).max() <= 2.0
    assert abs(values.std() - 0.8796) < 0.01  # the std of a normal cut at +-2
    init = BoundedTruncatedNormal(mean=1.0, stddev=0.5, bound=1.0, seed=7)
    again = keras.initializers.deserialize(keras.initializers.serialize(init))
    assert again.get_config() == init.get_config()
    np.testing.assert_array_equal(to_numpy(init((8, 8))), to_numpy(again((8, 8))))
    with pytest.raises(ValueError, match="bound"):
        BoundedTruncatedNormal(bound=0)


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
    patches = to_numpy(features["patch_tokens"])  # [B, N, D], grid order
    flat = to_numpy(vit.pool(features["tokens"], "flatten"))
    np.testing.assert_array_equal(flat, patches.reshape(len(patches), -1))
    assert vit.pooled_dim("flatten") == flat.shape[1] == vit.num_patches * vit.hidden_dim
    assert vit.pooled_dim("mean") == vit.pooled_dim("cls") == vit.hidden_dim
    both = to_numpy(vit.pool(features["tokens"], "mean+flatten"))  # what and where
    np.testing.assert_allclose(both[:, :vit.hidden_dim], patches.mean(1), atol=1e-6)
    np.testing.assert_array_equal(both[:, vit.hidden_dim:], flat)
    assert vit.pooled_dim("mean+flatten") == both.shape[1] == flat.shape[1] + vit.hidden_dim
    for bad in (lambda: vit.pool(features["tokens"], "max"), lambda: vit.pooled_dim("max")):
        with pytest.raises(ValueError, match="mean, cls, flatten"):
            bad()


@pytest.mark.parametrize("name", list(kc.PRESETS))
def test_presets_build_config(name, tmp_path):
    config = kc.PRESETS[name]["config"]
    size, patch = config["image_shape"][0], config["patch_size"]
    assert size % patch == 0
    if name == "vit_mini_p4_28":  # the default: built, and through a preset folder
        images = np.zeros((1, *config["image_shape"]), "float32")
        check_preset(kc.ViT, name, images, (1, (size // patch) ** 2 + 1, config["hidden_dim"]),
                     tmp_path)
    elif size <= 64:  # built (the 224 px ones: their numbers only)
        assert kc.ViT.from_preset(name).get_config()["hidden_dim"] == config["hidden_dim"]


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


def test_no_weight_decay_and_layer_groups():
    vit = tiny_vit()
    names = {v.path.split("/", 1)[1] for v in vit.no_weight_decay_variables()}
    assert {"cls_token", "mask_token", "rel_pos_bias/relative_position_bias_table",
            "blocks_0/attn/q_bias", "norm/gamma"} <= names
    assert "blocks_0/attn/qkv_kernel" not in names
    groups = vit.layer_groups()
    assert len(groups) == TINY_VIT["num_layers"] + 2
    assert sum(len(g) for g in groups) == len(vit.weights)
    assert "rel_pos_bias/relative_position_bias_table" in {
        v.path.split("/", 1)[1] for v in groups[-1]}  # the shared bias: scale 1
    # the release's grouping: an absolute position embedding decays with the patch embedding
    absolute = tiny_vit(position_embedding="absolute", use_shared_relative_position_bias=False)
    assert "pos_embed" in {v.path.split("/", 1)[1] for v in absolute.layer_groups()[0]}


@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_attention_equals_the_manual_path(with_bias):
    """keras.ops.dot_product_attention (the default) against the release's
    explicit matmul / softmax / matmul: the same layer weights give the same
    outputs, with and without the relative position bias."""
    from keras_conmim.models.layers import Attention

    x = np.random.RandomState(0).standard_normal((2, 17, 16)).astype("float32")
    bias = np.random.RandomState(1).standard_normal((2, 17, 17)).astype("float32")
    manual = Attention(16, 2, fused=False)
    manual.build(x.shape)
    randomize_weights(manual)
    fused = Attention.from_config({**manual.get_config(), "fused": True})
    fused.build(x.shape)
    fused.set_weights(manual.get_weights())
    kwargs = {"bias": bias} if with_bias else {}
    np.testing.assert_allclose(to_numpy(fused(x, **kwargs)), to_numpy(manual(x, **kwargs)),
                               atol=2e-5, rtol=1e-5)


def test_fused_and_manual_attention_train_the_same():
    """One ConMIM step (masked student, unmasked teacher, relative bias
    learned) with SGD(1): the weight change is minus the gradient, so equal
    updates mean equal gradients through the fused and the manual path."""
    models = []
    for fused in (False, True):
        model = kc.ConMIM(tiny_vit(fused_attention=fused), projector=kc.ProjectionHead(32, 16),
                          seed=0, total_steps=4)
        models.append(model)
    randomize_weights(models[0].encoder)
    models[1].encoder.set_weights(models[0].encoder.get_weights())
    models[1].projector.set_weights(models[0].projector.get_weights())
    for model in models:
        model.teacher_encoder.set_weights(model.encoder.get_weights())
        model.teacher_projector.set_weights(model.projector.get_weights())
        model.compile(optimizer=keras.optimizers.SGD(1.0))
        model.train_on_batch(np.random.RandomState(3).randint(0, 256, (4, 16, 16, 1)).astype("uint8"))
    assert models[1].encoder.get_config()["fused_attention"] is True
    for a, b in zip(models[0].encoder.weights, models[1].encoder.weights):
        np.testing.assert_allclose(to_numpy(b), to_numpy(a), atol=2e-5, rtol=1e-4, err_msg=a.path)
