"""Keras-CV adapter: a pre-trained encoder as a `keras_cv.models.Backbone`
with `pyramid_level_inputs`, for Keras-CV's `RetinaNet`, `YOLOV8Detector`,
`DeepLabV3Plus` and `SegFormer`.

Keras-CV is in maintenance (its README points to KerasHub; see
`keras_conmim.kerashub`). Build heads from their classes, never from
`*.from_preset(...)`: Keras-CV's preset constructors fetch configs from a
hub even without weights. Needs `keras-cv` (`pip install keras-conmim[cv]`).

    backbone = ViTCVBackbone(encoder, image_shape=(64, 64, 1))
    model = keras_cv.models.RetinaNet(num_classes=10, bounding_box_format="xyxy",
                                      backbone=backbone)
"""

import keras
import keras_cv

from keras_conmim.layers import PACKAGE, config_with_layers
from keras_conmim.pyramid import PyramidBackboneMixin, build_pyramid


@keras.saving.register_keras_serializable(package=PACKAGE)
class ViTCVBackbone(PyramidBackboneMixin, keras_cv.models.Backbone):
    """`keras_conmim.ViT` plus the simple feature pyramid
    (`keras_conmim.pyramid`) as a Keras-CV backbone.

    Input: float images `[B, H, W, C]` in 0..255 (normalised inside).
    Output: the last token grid `[B, H/p, W/p, D]`. `pyramid_level_inputs`
    maps `P{n}` to the layer (named `P{n}`) whose output has stride `2**n`.
    Keras-CV's `SegFormer` reads `embedding_dims`, one width per level, and
    names its layers by them: give it distinct `pyramid_channels`.

    Args: as `keras_conmim.kerashub.ViTPyramidBackbone` (no `level_naming`:
    Keras-CV's heads read levels by key or in order).
    """

    def __init__(self, encoder, image_shape=None, min_level=2, max_level=5,
                 pyramid_channels=None, mean=None, std=None, **kwargs):
        graph = build_pyramid(encoder, image_shape, min_level, max_level, pyramid_channels,
                              mean, std)
        super().__init__(inputs=graph.images, outputs=graph.grid, **kwargs)
        self._keep_pyramid(graph, min_level, max_level, mean, std)
        # Off the output path, so found by get_layer (below) from here.
        self._level_layers = {layer.name: layer for layer in graph.level_layers.values()}
        self.pyramid_level_inputs = {f"P{n}": f"P{n}" for n in graph.levels}
        self.embedding_dims = graph.channels

    def get_layer(self, name=None, index=None):
        # Keras-CV's get_feature_extractor asks for the level layers by name;
        # the coarser/finer levels are not on the path to `outputs`.
        if name in getattr(self, "_level_layers", {}):
            return self._level_layers[name]
        return super().get_layer(name=name, index=index)

    def get_config(self):
        config = super().get_config()
        config.update(self._pyramid_config())
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config_with_layers(config, ("encoder",)))
