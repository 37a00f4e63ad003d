"""Fine-tuning: the release's classifier on a pre-trained encoder."""

import keras
import numpy as np
from keras import ops

from keras_conmim.downstream.evaluation import extract_features, fit_linear_head, resolve_weight_decay
from keras_conmim.models.layers import PACKAGE, config_with_layers
from keras_conmim.models.views import normalize_images
from keras_conmim.models.vit import ViT


def finetune_encoder(encoder, drop_path_rate=0.1):
    """A copy of a pre-trained `ViT` in the fine-tuning layout.

    The shared relative position bias becomes one table per block, each
    initialised from the shared one (as the release does at fine-tuning), and
    stochastic depth is set to `drop_path_rate`. Other weights are copied.
    """
    config = dict(encoder.get_config())
    config.update(drop_path_rate=drop_path_rate, name=encoder.name + "_finetune")
    shared = encoder.position_embedding == "relative" and encoder.use_shared_relative_position_bias
    if shared:
        config["use_shared_relative_position_bias"] = False
    tuned = ViT.from_config(config)
    # numpy copies: on JAX, variables sharing one buffer break buffer donation.
    source = {v.path.split("/", 1)[1]: ops.convert_to_numpy(v) for v in encoder.weights}
    for v in tuned.weights:
        name = v.path.split("/", 1)[1]
        if shared and name.endswith("relative_position_bias/relative_position_bias_table"):
            v.assign(source["rel_pos_bias/relative_position_bias_table"].copy())
        else:
            v.assign(source[name])
    return tuned


@keras.saving.register_keras_serializable(package=PACKAGE)
class ViTClassifier(keras.Model):
    """Image classifier on a `ViT`: pooled patch tokens (the release: their
    mean), LayerNorm (`fc_norm`), linear head initialised small (the release
    scales the head by `head_init_scale` = 0.001).

    Takes uint8 images (or floats in [0, 255]) and normalises them inside
    with `mean` / `std` as `PairedViews` does; returns logits.

    Args:
        encoder: `ViT`.
        num_classes: int.
        pooling: `"mean"` (release), `"cls"`, `"flatten"` (the patch
            tokens in grid order, `ViT.pool`; `fc_norm` and the head are
            then N times wider) or `"mean+flatten"` (both, concatenated).
        head_init_scale: float. Defaults to `0.001`.
        mean, std: normalisation (None: ImageNet's, channel-averaged for gray).
        class_names: optional names of the `num_classes` outputs, in order
            (the recipes write the data's names here, so a saved classifier
            says what its outputs mean).
    """

    def __init__(self, encoder, num_classes, pooling="mean", head_init_scale=0.001,
                 mean=None, std=None, class_names=None, **kwargs):
        kwargs.setdefault("name", "vit_classifier")
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, received {num_classes}.")
        self.encoder = encoder
        self.num_classes = num_classes
        self.pooling = pooling
        self.head_init_scale = head_init_scale
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names for num_classes={num_classes}.")
        self.class_names = tuple(map(str, class_names)) if class_names is not None else None
        self.fc_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="fc_norm")
        self.head = keras.layers.Dense(
            num_classes, name="head",
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02 * head_init_scale))
        self.fc_norm.build((None, encoder.pooled_dim(pooling)))
        self.head.build((None, encoder.pooled_dim(pooling)))
        self.built = True

    def call(self, images, training=None):
        x = normalize_images(images, self.mean, self.std)
        tokens = self.encoder(x, training=training)
        return self.head(self.fc_norm(ViT.pool(tokens, self.pooling)))

    def features(self, images, batch_size=256):
        """What the head sees, `fc_norm(pool(encoder(images)))`, for uint8
        `images` (numpy, inference mode): float32 `[n, D]`."""
        pooled = extract_features(self.encoder, images, batch_size, self.pooling,
                                  self.mean, self.std)
        return np.asarray(ops.convert_to_numpy(self.fc_norm(pooled)), "float32")

    def init_head_from_probe(self, images, labels, epochs=30, min_steps=300, lr=1e-2,
                             weight_decay="cv", batch_size=256, seed=0):
        """LP-FT (Kumar et al., 2022): fit the head as a linear probe on the
        frozen features of the labelled `images`
        (`evaluation.fit_linear_head`: `epochs` passes, at least `min_steps`
        steps; the probe's standardisation is folded into the head), so
        fine-tuning starts from the probe's accuracy instead of chance and
        does not distort the pre-trained features while a random head is
        learned. `weight_decay="cv"`: the probe's weight decay is the one
        `evaluation.select_weight_decay` picks by 4-fold cross-validation on
        the labelled images (a probe that memorises a few images hands
        fine-tuning an over-confident head: measured, Fashion-MNIST 10 per
        class, docs/benchmarks.md), or a number. Returns `(train_accuracy, weight_decay)`."""
        features = self.features(images)
        fit = dict(epochs=epochs, min_steps=min_steps, lr=lr, batch_size=batch_size)
        weight_decay = resolve_weight_decay(weight_decay, features, labels, self.num_classes,
                                            seed=seed, **fit)
        kernel, bias, accuracy = fit_linear_head(features, labels, self.num_classes,
                                                 weight_decay=weight_decay, seed=seed, **fit)
        self.head.kernel.assign(kernel)
        self.head.bias.assign(bias)
        return accuracy, weight_decay

    def no_weight_decay_variables(self):
        return self.encoder.no_weight_decay_variables() + list(self.fc_norm.weights) + [self.head.bias]

    def get_config(self):
        config = super().get_config()
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            num_classes=self.num_classes, pooling=self.pooling,
            head_init_scale=self.head_init_scale, mean=self.mean, std=self.std,
            class_names=None if self.class_names is None else list(self.class_names))
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config_with_layers(config, ("encoder",)))
