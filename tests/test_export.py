import os

import keras
import numpy as np
import pytest

from keras_conmim.export import ServingEncoder, export_encoder
from conftest import randomize_weights, tiny_vit, to_numpy

BACKEND = keras.backend.backend()


def _encoder_and_images():
    vit = tiny_vit(image_shape=(16, 16, 3))
    randomize_weights(vit)
    images = np.random.RandomState(0).uniform(0, 255, (3, 16, 16, 3)).astype("float32")
    return vit, images


def test_keras_export_round_trip(tmp_path):
    vit, images = _encoder_and_images()
    path = export_encoder(vit, os.path.join(tmp_path, "enc.keras"))
    expected = ServingEncoder(vit)(images)
    loaded = keras.saving.load_model(path)
    out = loaded(images)
    assert out["patch_tokens"].shape == (3, 16, 16) and out["pooled"].shape == (3, 16)
    for key in ("patch_tokens", "pooled"):
        np.testing.assert_allclose(to_numpy(out[key]), to_numpy(expected[key]), atol=1e-6)


@pytest.mark.skipif(BACKEND == "torch", reason="SavedModel export runs on jax/tensorflow")
def test_saved_model_serves_the_same_features(tmp_path):
    tf = pytest.importorskip("tensorflow")
    vit, images = _encoder_and_images()
    path = export_encoder(vit, os.path.join(tmp_path, "saved"), format="tf_saved_model")
    expected = {k: to_numpy(v) for k, v in ServingEncoder(vit)(images).items()}
    loaded = tf.saved_model.load(path)  # keep a reference: its variables die with it
    served = loaded.serve(tf.constant(images))
    for key in ("patch_tokens", "pooled"):
        np.testing.assert_allclose(served[key].numpy(), expected[key], atol=1e-5)
    if BACKEND == "tensorflow":  # Keras' TFSMLayer exists for the TF backend only
        out = keras.layers.TFSMLayer(path, call_endpoint="serve")(images)
        np.testing.assert_allclose(to_numpy(out["pooled"]), expected["pooled"], atol=1e-5)


def test_bad_format_and_backend():
    vit, _ = _encoder_and_images()
    with pytest.raises(ValueError, match="keras, tf_saved_model"):
        export_encoder(vit, "x", format="tflite")
    if BACKEND == "torch":
        with pytest.raises(ValueError, match="jax or tensorflow"):
            export_encoder(vit, "x", format="tf_saved_model")
