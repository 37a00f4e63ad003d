"""The backbone committed to saved_models/ loads in one call and is the
default starting point of the recipes."""

import os
import sys

import numpy as np
import pytest

from conftest import ROOT, to_numpy

PATH = os.path.join(ROOT, "saved_models", "conmim_vit_mini_p4_28_fmnist.keras")


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
    with open(os.path.join(ROOT, "saved_models", "CARD.md")) as f:
        card = f.read()
    assert "conmim_vit_mini_p4_28_fmnist.keras" in card and "kNN" in card


def test_recipes_start_from_it():
    sys.path.insert(0, os.path.join(ROOT, "recipes"))
    import downstream
    from recipes import finetune

    assert finetune.parse_args([]).encoder == PATH
    assert downstream.DEFAULT_ENCODER == PATH
