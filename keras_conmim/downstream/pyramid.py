"""ViTDet's simple feature pyramid on a `ViT`, as a functional graph.

Shared by the KerasHub (`keras_conmim.integrations.kerashub`) and Keras-CV
(`keras_conmim.integrations.kerascv`) adapters; keras-only, like the core.

The last token grid (stride = patch size, after the final norm, CLS
dropped) is the level of its own stride; finer levels are bilinear
upsamplings of it, coarser ones 2x max-poolings of the next finer level
(ViTDet, Li et al. 2022, without its learned deconvolutions). Optionally
each level gets ViTDet's learned projection (conv 1x1 + LayerNorm + conv
3x3 + LayerNorm). Each level ends in an `Identity` layer named `P{n}` for
the stride `2**n` it has.
"""

import math
from dataclasses import dataclass, field

import keras
from keras import ops

from keras_conmim.models.resize import resize_encoder
from keras_conmim.models.views import normalize_images
from keras_conmim.models.vit import ViT


@dataclass
class PyramidGraph:
    images: object  # keras.Input
    grid: object  # [B, H/p, W/p, D]
    levels: dict  # n -> tensor at stride 2**n
    level_layers: dict  # n -> the Identity layer named P{n}
    encoder: ViT
    channels: list = field(default_factory=list)
    side_layers: list = field(default_factory=list)  # layers off the grid's path
    pyramid_channels: list = None  # validated argument


class PyramidBackboneMixin:
    """What the KerasHub and Keras-CV adapters share: after the functional
    model is built, keep the graph's side layers (so their weights are
    tracked: they feed the pyramid, not `outputs`) and the config."""

    def _keep_pyramid(self, graph, min_level, max_level, mean, std):
        self.pyramid_layers = graph.side_layers
        self.encoder = graph.encoder
        self.image_shape = tuple(graph.encoder.image_shape)
        self.min_level = min_level
        self.max_level = max_level
        self.pyramid_channels = graph.pyramid_channels
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None

    def _pyramid_config(self):
        return dict(encoder=keras.saving.serialize_keras_object(self.encoder),
                    image_shape=self.image_shape, min_level=self.min_level,
                    max_level=self.max_level, pyramid_channels=self.pyramid_channels,
                    mean=self.mean, std=self.std)


def check_pyramid_args(encoder, min_level, max_level, pyramid_channels):
    """Validated `pyramid_channels` (None or one int per level)."""
    if not isinstance(encoder, ViT):
        raise TypeError(f"encoder must be a keras_conmim.ViT, received {type(encoder).__name__}.")
    if encoder.patch_size & (encoder.patch_size - 1):
        raise ValueError(f"patch_size {encoder.patch_size} is not a power of two: the pyramid "
                         "levels need strides 2**n.")
    if not 1 <= min_level <= max_level:
        raise ValueError(f"Need 1 <= min_level <= max_level, received {min_level}, {max_level}.")
    num_levels = max_level - min_level + 1
    if pyramid_channels is None:
        return None
    if isinstance(pyramid_channels, int):
        pyramid_channels = [pyramid_channels] * num_levels
    pyramid_channels = [int(c) for c in pyramid_channels]
    if len(pyramid_channels) != num_levels or min(pyramid_channels) < 1:
        raise ValueError(f"pyramid_channels needs {num_levels} positive ints (levels "
                         f"{min_level}..{max_level}), received {pyramid_channels}.")
    return pyramid_channels


def build_pyramid(encoder, image_shape=None, min_level=2, max_level=5, pyramid_channels=None,
                  mean=None, std=None):
    """Build the graph. `images`: float `[B, H, W, C]` in 0..255, normalised
    inside as in pre-training. `image_shape`: run the encoder at this size
    (`keras_conmim.models.resize.resize_encoder`)."""
    pyramid_channels = check_pyramid_args(encoder, min_level, max_level, pyramid_channels)
    if image_shape is not None:
        encoder = resize_encoder(encoder, image_shape)
    h, w, c = encoder.image_shape
    gh, gw = encoder.grid_size
    d = encoder.hidden_dim
    images = keras.Input(shape=(h, w, c), name="images")
    tokens = encoder(normalize_images(images, mean, std))
    grid = keras.layers.Reshape((gh, gw, d), name="token_grid")(tokens[:, 1:])

    own = int(round(math.log2(encoder.patch_size)))
    raw, side = {}, []
    for n in range(min_level, max_level + 1):
        if n < own:
            layer = keras.layers.UpSampling2D(2 ** (own - n), interpolation="bilinear",
                                              name=f"upsample_p{n}")
            raw[n] = layer(grid)
            side.append(layer)
        elif n == own:
            raw[n] = grid
        else:
            layer = keras.layers.MaxPooling2D(2, strides=2, padding="same", name=f"pool_p{n}")
            raw[n] = layer(raw.get(n - 1, grid))
            side.append(layer)
    levels, level_layers = {}, {}
    channels = pyramid_channels or [d] * len(raw)
    for (n, x), width in zip(sorted(raw.items()), channels):
        if pyramid_channels is not None:
            for layer in (
                keras.layers.Conv2D(width, 1, use_bias=False, name=f"p{n}_conv1"),
                keras.layers.LayerNormalization(epsilon=1e-6, name=f"p{n}_norm1"),
                keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"p{n}_conv2"),
                keras.layers.LayerNormalization(epsilon=1e-6, name=f"p{n}_norm2"),
            ):
                x = layer(x)
                side.append(layer)
        level_layers[n] = keras.layers.Identity(name=f"P{n}")
        levels[n] = level_layers[n](x)
        side.append(level_layers[n])
    return PyramidGraph(images=images, grid=grid, levels=levels, level_layers=level_layers,
                        encoder=encoder, channels=list(channels), side_layers=side,
                        pyramid_channels=pyramid_channels)
