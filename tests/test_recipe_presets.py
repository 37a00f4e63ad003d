"""Recipes per preset: resolution (preset < config file < flags), the release's
numbers on the 224 px presets, and the model `build_model` makes from them."""

import json
import os

import keras
import numpy as np
import pytest

import keras_conmim as kc
from keras_conmim.errors import ConfigError
from conftest import to_numpy
from keras_conmim.runs import pretrain_config as pretrain  # what recipes/pretrain.py resolves with


def test_every_preset_has_a_complete_recipe():
    for name, preset in kc.PRESETS.items():
        assert set(preset["pretrain"]) == set(pretrain.RECIPE_KEYS), name
        config, _, _ = pretrain.resolve_config(["--preset", name])
        assert pretrain.validate(config) == [], name


@pytest.mark.parametrize("name", ["vit_tiny_p16_224", "vit_small_p16_224", "vit_base_p16_224"])
def test_224_presets_keep_the_release_numbers(name):
    config, _, sources = pretrain.resolve_config(["--preset", name])
    assert set(sources.values()) == {"preset"}
    assert config["lr"] == 5e-4 and config["min_lr"] == 1e-5 and config["warmup_epochs"] == 5
    assert config["weight_decay"] == 0.05 and config["clip_norm"] is None
    assert (config["mask"], config["mask_ratio"], config["mask_unit"]) == ("random", 0.75, 2)
    assert config["mask_token_position"] == "none" and config["temperature"] == 0.1
    assert (config["base_momentum"], config["final_momentum"]) == (0.996, 1.0)
    assert config["crop_scale_min"] == 0.08 and config["batch_size"] == 2048
    assert config["views"] == dict(jitter_prob=0.8, brightness=0.4, contrast=0.4, saturation=0.2,
                                   hue=0.1, grayscale_prob=0.2, blur_prob=0.1,
                                   blur_sigma=(0.1, 2.0), solarize_prob=0.2)
    large, _, _ = pretrain.resolve_config(["--preset", "vit_large_p16_224"])
    assert (large["lr"], large["warmup_epochs"], large["clip_norm"]) == (7.5e-4, 10, 1.0)
    large, _, sources = pretrain.resolve_config(["--preset", "vit_large_p16_224",
                                                 "--clip-norm", "none"])
    assert large["clip_norm"] is None and sources["clip_norm"] == "flag"


def test_flags_and_config_file_override_the_preset(tmp_path):
    path = os.path.join(tmp_path, "run.json")
    with open(path, "w") as f:
        json.dump({"lr": 1e-3, "mask_unit": 3, "views": {"solarize_prob": 0.0}}, f)
    config, _, sources = pretrain.resolve_config(
        ["--preset", "vit_mini_p4_28", "--config", path, "--lr", "2e-3", "--clip-norm", "none"])
    preset = kc.PRESETS["vit_mini_p4_28"]["pretrain"]
    assert config["lr"] == 2e-3 and sources["lr"] == "flag"
    assert config["mask_unit"] == 3 and sources["mask_unit"] == "file"
    assert config["views"] == {"solarize_prob": 0.0} and sources["views"] == "file"
    assert config["epochs"] == preset["epochs"] and sources["epochs"] == "preset"
    assert config["clip_norm"] is None
    text = pretrain.describe_recipe(config, sources)
    assert "lr                   0.002   <- flag" in text
    assert "mask_unit            3   <- file" in text
    assert f"epochs               {preset['epochs']}\n" in text


def test_bad_recipe_values_fail_before_training(tmp_path, capsys):
    path = os.path.join(tmp_path, "run.json")
    with open(path, "w") as f:
        json.dump({"views": {"sharpness": 2.0}}, f)
    for argv, message in ((["--config", path], "views: unknown keys ['sharpness']"),
                          (["--mask-unit", "0"], "mask_unit=0: must be an integer >= 1"),
                          (["--mask-token-position", "learned"], "choose one of none, sincos"),
                          (["--temperature", "0"], "temperature=0.0: must be > 0"),
                          (["--resize", "stretch"], "choose one of crop, pad, center")):
        with pytest.raises(ConfigError) as error:
            pretrain.resolve_config(argv)
        assert message in str(error.value), argv


def test_build_model_follows_the_resolved_recipe():
    config, _, _ = pretrain.resolve_config(
        ["--preset", "vit_mini_p4_28", "--image-size", "16", "--mask-unit", "1", "--temperature",
         "0.2", "--base-momentum", "0.99", "--mask-token-position", "sincos", "--epochs", "3",
         "--crop-scale-min", "0.5"])
    model = pretrain.build_model(config, steps_per_epoch=5)
    assert model.encoder.image_shape == (16, 16, 1)
    assert model.encoder.mask_token_position == "sincos"
    assert model.mask_generator.unit_size == 1
    assert model.temperature == 0.2 and model.base_momentum == 0.99
    assert model.views.crop_scale == (0.5, 1.0) and model.views.saturation == 0.0
    assert float(to_numpy(model.total_steps)) == 15
    assert isinstance(model.optimizer, keras.optimizers.AdamW)
    assert model.optimizer.beta_2 == 0.98


def _unnamed(config):
    """A config without the layers' generated names (a second model's heads
    are `projection_head_1`...)."""
    if isinstance(config, dict):
        return {k: _unnamed(v) for k, v in config.items() if k != "name"}
    if isinstance(config, (list, tuple)):
        return [_unnamed(v) for v in config]
    return config


@pytest.mark.parametrize("name", ["vit_mini_p4_28", "vit_tiny_p4_32", "vit_mini_p4_32"])
def test_conmim_from_preset_is_the_presets_pretraining_model(name):
    """`ConMIM.from_preset(name)` carries every value of PRESETS[name]["pretrain"]
    that shapes the model, and is the model the recipe builds (the same
    config, the same optimizer schedule): the README's `fit` is the recipe's."""
    recipe = kc.PRESETS[name]["pretrain"]
    model = kc.ConMIM.from_preset(name, seed=0)
    assert model.encoder.mask_token_position == recipe["mask_token_position"]
    assert model.mask_generator.mask_ratio == recipe["mask_ratio"]
    assert model.mask_generator.unit_size == recipe["mask_unit"]
    assert type(model.mask_generator).__name__ == {"random": "RandomUnitMasking",
                                                   "block": "BlockMasking"}[recipe["mask"]]
    assert model.views.crop_scale == (recipe["crop_scale_min"], 1.0)
    for key, value in recipe["views"].items():
        assert getattr(model.views, key) == (tuple(value) if isinstance(value, list) else value), key
    assert (model.temperature, model.base_momentum, model.final_momentum) == (
        recipe["temperature"], recipe["base_momentum"], recipe["final_momentum"])
    config, _, _ = pretrain.resolve_config(["--preset", name, "--seed", "0"])
    built = pretrain.build_model(config, steps_per_epoch=7)
    ours = kc.ConMIM.from_preset(name, seed=0, total_steps=7 * config["epochs"])
    assert _unnamed(ours.get_config()) == _unnamed(built.get_config())
    optimizer = kc.pretrain_optimizer(name, steps_per_epoch=7)
    ours_config, built_config = optimizer.get_config(), built.optimizer.get_config()
    assert _unnamed(ours_config) == _unnamed(built_config)  # schedule, decay, betas, clipping
    schedule = ours_config["learning_rate"]["config"]
    assert schedule["warmup_target"] in (recipe["lr"], None)
    assert schedule["decay_steps"] + schedule["warmup_steps"] == 7 * config["epochs"]
    assert optimizer.weight_decay == recipe["weight_decay"]
    # a keyword overrides the recipe, as a flag does
    hotter = kc.ConMIM.from_preset(name, temperature=0.2, mask_ratio=0.6)
    assert hotter.temperature == 0.2 and hotter.mask_generator.mask_ratio == 0.6
    with pytest.raises(ValueError, match="unknown settings"):
        kc.pretrain_optimizer(name, steps_per_epoch=7, learning_rate=1.0)


def test_mask_token_position_is_switchable_and_off_is_the_release_layout():
    images = np.random.RandomState(0).standard_normal((2, 16, 16, 1)).astype("float32")
    mask = np.zeros((2, 16), bool)
    mask[:, [1, 2, 9]] = True
    keras.utils.set_random_seed(0)
    off = kc.ViT(image_shape=(16, 16, 1), patch_size=4, num_layers=2, num_heads=2,
                 hidden_dim=16, mlp_dim=32)
    on = kc.ViT.from_config({**off.get_config(), "mask_token_position": "sincos",
                             "mask_token_position_scale": 1.0})
    assert [w.path for w in on.weights] == [w.path for w in off.weights]  # no new weights
    on.set_weights(off.get_weights())
    # Without a mask, and at visible patches' inputs, nothing changes.
    np.testing.assert_allclose(to_numpy(on(images)), to_numpy(off(images)), atol=1e-6)
    # With the release's layout the masked patches enter identical; with the
    # code each position enters distinct.
    embed_off = to_numpy(off.patch_embedding(images))
    tokens_off = _masked_inputs(off, images, mask)
    tokens_on = _masked_inputs(on, images, mask)
    np.testing.assert_allclose(tokens_off[0, 1], tokens_off[0, 9], atol=1e-7)
    assert np.abs(tokens_on[0, 1] - tokens_on[0, 9]).max() > 0.1
    np.testing.assert_allclose(tokens_on[:, 0], embed_off[:, 0], atol=1e-6)  # visible untouched
    again = kc.ViT.from_config(on.get_config())
    assert again.mask_token_position == "sincos" and again.mask_token_position_scale == 1.0
    with pytest.raises(ValueError, match="mask_token_position"):
        kc.ViT(image_shape=(16, 16, 1), patch_size=4, mask_token_position="learned")


def _masked_inputs(vit, images, mask):
    """The patch tokens that enter the first block (mask tokens in place)."""
    x = vit.patch_embedding(images)
    m = keras.ops.cast(mask[..., None], x.dtype)
    token = vit.mask_token
    if vit._mask_position_code is not None:
        token = token + vit._mask_position_code
    return to_numpy(x * (1 - m) + token * m)


def test_vit_build_again_is_a_no_op():
    vit = kc.ViT.from_preset("vit_mini_p4_28")
    before = [to_numpy(w) for w in vit.weights]
    vit.build((None, 28, 28, 1))
    assert len(vit.weights) == len(before)


def test_public_subpackages_are_reachable_from_the_top_level():
    assert kc.data.from_idx is not None and kc.downstream.evaluation.extract_features is not None
    assert kc.models.vit.ViT is kc.ViT and kc.runs.Run is not None
    assert {"data", "downstream", "integrations", "models", "runs"} <= set(dir(kc))
    with pytest.warns(DeprecationWarning, match="keras_conmim.downstream.evaluation"):
        assert kc.evaluation is kc.downstream.evaluation  # flat path, on purpose
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kc.nope  # noqa: B018


def test_center_resize_pads_without_scaling():
    from keras_conmim.data.images import resize_image

    image = np.arange(28 * 28, dtype="uint16").reshape(28, 28, 1) % 251
    image = image.astype("uint8")
    padded = resize_image(image, (32, 32), "center")
    assert padded.shape == (32, 32, 1)
    np.testing.assert_array_equal(padded[2:30, 2:30], image)
    assert padded[:2].max() == 0 and padded[:, 30:].max() == 0
    np.testing.assert_array_equal(resize_image(padded, (28, 28), "center"), image)
    source = kc.data.load_default("test", image_size=32, resize="center")
    assert source.batch(np.arange(2)).shape == (2, 32, 32, 1)


def test_finetune_takes_the_preset_recipe_unless_a_flag_overrides(tmp_path):
    from recipes import finetune

    args = finetune.parse_args(["--from-scratch", "--preset", "vit_base_p16_224", "--lr", "1e-3",
                                "--fixed-recipe"])
    recipe, _, text = finetune.recipe_of(args, "vit_base_p16_224")
    # from random init: the preset's own recipe (DeiT's), no layer decay
    assert (recipe.epochs, recipe.batch_size, recipe.warmup_epochs, recipe.layer_decay) == (
        300, 1024, 5, 1.0)
    assert (recipe.mixup, recipe.cutmix, recipe.drop_path, recipe.label_smoothing) == (
        0.8, 1.0, 0.1, 0.1)
    assert recipe.lr == 1e-3 and "lr                   0.001   <- flag" in text
    assert text.startswith("from-scratch recipe (vit_base_p16_224, as written)")
    path = os.path.join(tmp_path, "enc.keras")
    kc.ViT.from_preset("vit_mini_p4_28").save(path)
    args = finetune.parse_args(["--encoder", path, "--fixed-recipe"])
    recipe, _, _ = finetune.recipe_of(args, "vit_base_p16_224")  # pre-trained: the release's
    assert (recipe.epochs, recipe.batch_size, recipe.warmup_epochs, recipe.layer_decay) == (
        100, 1024, 20, 0.65)
    vit = kc.ViT.from_preset("vit_mini_p4_28")
    assert finetune.preset_for(vit.get_config()) == "vit_mini_p4_28"
    assert finetune.preset_for({**vit.get_config(), "hidden_dim": 64}) is None
    args = finetune.parse_args(["--from-scratch", "--preset", "vit_mini_p4_28"])
    recipe, _, text = finetune.recipe_of(args, None)
    assert "no preset matches" in text
    assert recipe.epochs == kc.PRESETS["vit_mini_p4_28"]["scratch"]["epochs"]


def test_every_preset_has_finetune_and_scratch_recipes():
    from recipes import finetune

    for name, preset in kc.PRESETS.items():
        for kind in ("finetune", "scratch"):
            assert set(preset[kind]) == set(finetune.FINETUNE_KEYS), (name, kind)
        assert preset["scratch"]["layer_decay"] == 1.0, name  # nothing pre-trained to keep
        # the release's 0.65 for its ImageNet-length pre-training; none for the small
        # presets, whose short pre-training measured better without (presets.py)
        small = preset["config"]["image_shape"][0] < 224
        assert preset["finetune"]["layer_decay"] == (1.0 if small else 0.65), name
        # the head: flattened patch tokens on aligned 28 px Fashion-MNIST (measured,
        # presets.py), the release's mean pooling everywhere else; the same for both starts
        fashion = name.startswith("vit_mini_")
        for kind in ("finetune", "scratch"):
            assert preset[kind]["pooling"] == ("flatten" if fashion else "mean"), (name, kind)
            assert preset[kind]["crop"] == "auto", (name, kind)  # the release's geometry
