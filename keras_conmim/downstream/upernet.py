"""UperNet (Xiao et al. 2018), the semantic-segmentation head the ConMIM paper
fine-tunes on ADE20K (as BEiT does): a pyramid pooling module on the coarsest
level, an FPN down to the finest, every level upsampled to the finest and
fused, then per-pixel class logits at the input size. keras layers only, on
every backend.

    backbone = keras_conmim.integrations.kerashub.ViTPyramidBackbone(encoder, image_shape=(48, 48, 1),
                                                        min_level=2, max_level=4)
    model = keras_conmim.UperNetSegmenter(backbone, num_classes=11)
    model.compile(optimizer="adamw",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
"""

import keras

from keras_conmim.models.layers import PACKAGE, config_with_layers

POOL_BINS = (1, 2, 3, 6)  # the paper's pyramid pooling scales


def _block(filters, kernel, name):
    return [keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False,
                                name=f"{name}_conv"),
            keras.layers.BatchNormalization(name=f"{name}_norm"),
            keras.layers.Activation("relu", name=f"{name}_relu")]


def _apply(layers, x):
    for layer in layers:
        x = layer(x)
    return x


@keras.saving.register_keras_serializable(package=PACKAGE)
class UperNetSegmenter(keras.Model):
    """Per-pixel class logits `[B, H, W, num_classes]` from a pyramid backbone.

    Args:
        backbone: a Keras model with `pyramid_outputs` (`{"P2": tensor, ...}`
            at strides `2**n`) and a fixed input size; images in 0..255.
        num_classes: output classes (background included, as KerasHub's
            segmenters count them).
        levels: the pyramid levels read, finest first (default P2-P4).
        width: channels of the pooling module, the FPN and the fusion.
        pool_bins: pyramid pooling grid sizes; those that do not divide the
            coarsest level's side (or exceed it) are left out.
        dropout: before the classifier.
    """

    def __init__(self, backbone, num_classes, levels=(2, 3, 4), width=64,
                 pool_bins=POOL_BINS, dropout=0.1, **kwargs):
        levels = tuple(int(n) for n in levels)
        pyramid = getattr(backbone, "pyramid_outputs", None) or {}
        missing = [f"P{n}" for n in levels if f"P{n}" not in pyramid]
        if missing:
            raise ValueError(f"the backbone has no {', '.join(missing)} in its pyramid_outputs "
                             f"({', '.join(pyramid) or 'none'}).")
        if list(levels) != list(range(levels[0], levels[-1] + 1)):
            raise ValueError(f"levels {levels} must be consecutive, finest first.")
        h, w, c = backbone.input_shape[1:]
        side = h // 2 ** levels[-1]
        bins = [b for b in pool_bins if b <= side and side % b == 0]
        if not bins:
            raise ValueError(f"no pooling bin of {pool_bins} divides the coarsest level's "
                             f"side {side}.")
        features = keras.Model(backbone.inputs, {f"P{n}": pyramid[f"P{n}"] for n in levels},
                               name="pyramid")
        images = keras.Input(shape=(h, w, c), name="images")
        feats = features(images)

        # Pyramid pooling on the coarsest level.
        top = feats[f"P{levels[-1]}"]
        pooled = [top]
        for b in bins:
            x = keras.layers.AveragePooling2D(side // b, name=f"ppm_pool{b}")(top)
            x = _apply(_block(width, 1, f"ppm{b}"), x)
            pooled.append(keras.layers.UpSampling2D(side // b, interpolation="bilinear",
                                                    name=f"ppm_up{b}")(x))
        x = keras.layers.Concatenate(name="ppm_concat")(pooled)
        fpn = {levels[-1]: _apply(_block(width, 3, "ppm_bottleneck"), x)}

        # FPN top-down.
        above = fpn[levels[-1]]
        for n in reversed(levels[:-1]):
            lateral = _apply(_block(width, 1, f"lateral_p{n}"), feats[f"P{n}"])
            above = keras.layers.Add(name=f"top_down_p{n}")(
                [lateral, keras.layers.UpSampling2D(2, interpolation="bilinear",
                                                    name=f"up_p{n}")(above)])
            fpn[n] = _apply(_block(width, 3, f"fpn_p{n}"), above)

        # Fuse at the finest level.
        finest = levels[0]
        fused = [fpn[finest]] + [
            keras.layers.UpSampling2D(2 ** (n - finest), interpolation="bilinear",
                                      name=f"fuse_up_p{n}")(fpn[n]) for n in levels[1:]]
        x = keras.layers.Concatenate(name="fuse_concat")(fused)
        x = _apply(_block(width, 3, "fuse"), x)
        x = keras.layers.Dropout(dropout, name="dropout")(x)
        x = keras.layers.Conv2D(num_classes, 1, name="classifier")(x)
        logits = keras.layers.UpSampling2D(2 ** finest, interpolation="bilinear",
                                           name="logits")(x)
        super().__init__(inputs=images, outputs=logits, **kwargs)
        self.backbone = backbone
        self.num_classes, self.levels, self.width = int(num_classes), levels, int(width)
        self.pool_bins, self.dropout = tuple(int(b) for b in pool_bins), float(dropout)

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable,
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "num_classes": self.num_classes, "levels": list(self.levels),
                "width": self.width, "pool_bins": list(self.pool_bins),
                "dropout": self.dropout}

    @classmethod
    def from_config(cls, config):
        return cls(**config_with_layers(config, ("backbone",)))
