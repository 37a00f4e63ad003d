"""The backbone shipped in keras_conmim/weights/ loads in one call and is the
default starting point of the recipes."""

import os
import sys

import numpy as np
import pytest

from conftest import ROOT, to_numpy

PATH = os.path.join(ROOT, "keras_conmim", "weights", "conmim_vit_mini_p4_28_fmnist.keras")


def test_shipped_backbone_loads_in_one_call():
    import keras_conmim as kc
    from keras_conmim.data import load_default_data

    assert os.path.getsize(PATH) < 10e6
    encoder = kc.load_encoder(PATH)
    assert isinstance(encoder, kc.ViT)
    preset = kc.PRESETS["vit_mini_p4_28"]["config"]
    for key, value in preset.items():
        assert tuple(np.atleast_1d(getattr(encoder, key))) == tuple(np.atleast_1d(value)), key
    images, _ = load_default_data("test")
    tokens = to_numpy(encoder(kc.normalize_images(images[:8])))
    assert tokens.shape == (8, 50, 128) and np.isfinite(tokens).all()
    with open(os.path.join(ROOT, "keras_conmim", "weights", "CARD.md")) as f:
        card = f.read()
    assert "conmim_vit_mini_p4_28_fmnist.keras" in card and "kNN" in card


def test_recipes_start_from_it():
    sys.path.insert(0, os.path.join(ROOT, "recipes"))
    import downstream
    from recipes import finetune

    from keras_conmim.runs.cli import encoder_path

    # the default --encoder is the preset with weights, whose file is the shipped one
    assert encoder_path(finetune.parse_args([]).encoder) == PATH
    assert encoder_path(downstream.parser("segment", "x", ("deeplabv3",)).parse_args([]).encoder) == PATH


def test_presets_with_weights_load_by_name(tmp_path):
    """KerasHub-style: the shipped backbone by preset name (and its
    architecture alone with load_weights=False), ConMIM.from_preset starting
    both encoders from it, a preset folder written by save_to_preset loading
    by path, and list_presets saying which presets carry weights."""
    import keras_conmim as kc

    name = "conmim_vit_mini_p4_28_fmnist"
    table = kc.list_presets()
    assert table[name]["weights"] == os.path.basename(PATH)
    assert table[name]["architecture"] == "vit_mini_p4_28"
    assert table["vit_mini_p4_28"]["weights"] is None
    images = kc.normalize_images(np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1), "uint8"))
    expected = to_numpy(kc.load_encoder(PATH)(images))
    by_name = kc.ViT.from_preset(name)
    assert by_name.name == "vit"
    np.testing.assert_allclose(to_numpy(by_name(images)), expected, atol=1e-5)
    assert kc.load_encoder(name).count_params() == by_name.count_params()
    fresh = kc.ViT.from_preset(name, load_weights=False)
    assert np.abs(to_numpy(fresh(images)) - expected).max() > 1e-2
    with_drop_path = kc.ViT.from_preset(name, drop_path_rate=0.1)
    assert with_drop_path.drop_path_rate == 0.1
    np.testing.assert_allclose(to_numpy(with_drop_path(images)), expected, atol=1e-5)
    model = kc.ConMIM.from_preset(name)
    np.testing.assert_allclose(to_numpy(model.encoder(images)), expected, atol=1e-5)
    np.testing.assert_allclose(to_numpy(model.teacher_encoder(images)), expected, atol=1e-5)
    folder = str(tmp_path / "preset")
    by_name.save_to_preset(folder)
    assert sorted(os.listdir(folder)) == ["config.json", "metadata.json", "model.weights.h5"]
    np.testing.assert_allclose(to_numpy(kc.ViT.from_preset(folder)(images)), expected, atol=1e-5)
    for path in (folder, PATH):  # a folder or file without its weights: the architecture alone
        bare = kc.ViT.from_preset(path, load_weights=False)
        assert bare.get_config() == by_name.get_config()
        assert np.abs(to_numpy(bare(images)) - expected).max() > 1e-2
    with pytest.raises(FileExistsError):
        by_name.save_to_preset(folder)
    with pytest.raises(ValueError, match="without weights"):
        kc.load_encoder("vit_mini_p4_28")
    with pytest.raises(ValueError, match="Unknown preset"):
        kc.ViT.from_preset("vit_nope")


def test_weights_folder_from_the_environment(tmp_path, monkeypatch):
    import shutil

    from keras_conmim.presets import WEIGHTS_ENV, weights_path

    shutil.copy(PATH, tmp_path)
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    assert weights_path("conmim_vit_mini_p4_28_fmnist") == str(tmp_path / os.path.basename(PATH))
    with pytest.raises(ValueError, match="carries no weights"):
        weights_path("vit_mini_p4_28")
