"""Export encoders for serving and for downstream heads.

`.keras` keeps everything (and reloads after `import keras_conmim`); a
TensorFlow SavedModel (`format="tf_saved_model"`, JAX or TensorFlow backend)
serves without keras_conmim installed. The SavedModel's signature takes
float images `[B, H, W, C]` in the uint8 value range [0, 255] (normalised
inside, as in pre-training) and returns `patch_tokens` `[B, N, D]` and
`pooled` `[B, D]` (mean of the patch tokens).
"""

import os

import keras

from keras_conmim.layers import PACKAGE, config_with_layers
from keras_conmim.saving import save_atomic
from keras_conmim.views import normalize_images
from keras_conmim.vit import ViT

FORMATS = ("keras", "tf_saved_model")


@keras.saving.register_keras_serializable(package=PACKAGE)
class ServingEncoder(keras.Model):
    """`ViT` plus its input normalisation, returning named features.

    Args:
        encoder: `ViT`.
        mean, std: normalisation in [0, 1] units (None: as `PairedViews`).
        pooling: `"mean"` or `"cls"`.
    """

    def __init__(self, encoder, mean=None, std=None, pooling="mean", **kwargs):
        kwargs.setdefault("name", "serving_encoder")
        super().__init__(**kwargs)
        self.encoder = encoder
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        self.pooling = pooling
        self.built = True

    def call(self, images):
        tokens = self.encoder(normalize_images(images, self.mean, self.std), training=False)
        return {"patch_tokens": tokens[:, 1:], "pooled": ViT.pool(tokens, self.pooling)}

    def get_config(self):
        config = super().get_config()
        config.update(encoder=keras.saving.serialize_keras_object(self.encoder),
                      mean=self.mean, std=self.std, pooling=self.pooling)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config_with_layers(config, ("encoder",)))


def export_encoder(encoder, path, format="keras", mean=None, std=None, pooling="mean"):
    """Write `encoder` (a `ViT`) to `path` as `.keras` or a SavedModel
    directory; returns the path. The SavedModel needs TensorFlow and the
    JAX or TensorFlow backend."""
    if format not in FORMATS:
        raise ValueError(f"Unknown format {format!r}. Valid: {', '.join(FORMATS)}.")
    model = ServingEncoder(encoder, mean=mean, std=std, pooling=pooling)
    if format == "keras":
        return save_atomic(model, path)
    backend = keras.backend.backend()
    if backend not in ("jax", "tensorflow"):
        raise ValueError(f"SavedModel export runs on the jax or tensorflow backend, not {backend}: "
                         "save a .keras file and export it from one of those.")
    if os.path.exists(path):
        raise ValueError(f"{path} exists; pass a new directory.")
    h, w, c = encoder.image_shape
    spec = keras.InputSpec(shape=(None, h, w, c), dtype="float32")
    model.export(path, format="tf_saved_model", input_signature=[spec], verbose=False)
    return path
