"""Keras-CV adapters: a pre-trained encoder as a `keras_cv.models.Backbone`
with `pyramid_level_inputs`, for Keras-CV's `RetinaNet`, `YOLOV8Detector`,
`DeepLabV3Plus` and `SegFormer`; a KerasHub backbone (its `pyramid_outputs`)
as one (`KerasHubCVBackbone`: KerasHub's ResNet under Keras-CV's YOLOv8); and
`NonMaxSuppression`, Keras-CV's box decoder without its torchvision need on
the torch backend.

Keras-CV is in maintenance (its README points to KerasHub; see
`keras_conmim.integrations.kerashub`). Build heads from their classes, never from
`*.from_preset(...)`: Keras-CV's preset constructors fetch configs from a
hub even without weights. Needs `keras-cv` (`pip install keras-conmim[cv]`).

    backbone = ViTCVBackbone(encoder, image_shape=(64, 64, 1))
    model = keras_cv.models.RetinaNet(num_classes=10, bounding_box_format="xyxy",
                                      backbone=backbone)
"""

import keras
import keras_cv

from keras_conmim.models.layers import PACKAGE, config_with_layers
from keras_conmim.downstream.pyramid import PyramidBackboneMixin, build_pyramid


@keras.saving.register_keras_serializable(package=PACKAGE)
class ViTCVBackbone(PyramidBackboneMixin, keras_cv.models.Backbone):
    """`keras_conmim.ViT` plus the simple feature pyramid
    (`keras_conmim.downstream.pyramid`) as a Keras-CV backbone.

    Input: float images `[B, H, W, C]` in 0..255 (normalised inside).
    Output: the last token grid `[B, H/p, W/p, D]`. `pyramid_level_inputs`
    maps `P{n}` to the layer (named `P{n}`) whose output has stride `2**n`.
    Keras-CV's `SegFormer` reads `embedding_dims`, one width per level, and
    names its layers by them: give it distinct `pyramid_channels`.

    Args: as `keras_conmim.integrations.kerashub.ViTPyramidBackbone` (no `level_naming`:
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


@keras.saving.register_keras_serializable(package=PACKAGE)
class KerasHubCVBackbone(keras_cv.models.Backbone):
    """A KerasHub backbone (one with `pyramid_outputs`, as KerasHub's
    `ResNetBackbone`) as a Keras-CV backbone: the same layers and weights,
    with `pyramid_level_inputs` naming the layer behind each of its
    `pyramid_outputs`, so Keras-CV's heads (`YOLOV8Detector` reads P3-P5) take it.

        resnet = keras_hub.models.ResNetBackbone(..., image_shape=(64, 64, 3))
        model = keras_cv.models.YOLOV8Detector(
            num_classes=10, bounding_box_format="yxyx", backbone=KerasHubCVBackbone(resnet))
    """

    def __init__(self, backbone, **kwargs):
        levels = getattr(backbone, "pyramid_outputs", None)
        if not levels:
            raise ValueError(f"{type(backbone).__name__} has no pyramid_outputs: give a KerasHub "
                             "backbone that has them (ResNetBackbone, CSPDarkNetBackbone, ...).")
        super().__init__(inputs=backbone.inputs, outputs=backbone.outputs, **kwargs)
        self.backbone = backbone
        self.pyramid_level_inputs = {level: tensor._keras_history.operation.name
                                     for level, tensor in levels.items()}

    def get_config(self):
        config = super().get_config()
        config.update(backbone=keras.saving.serialize_keras_object(self.backbone))
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config_with_layers(config, ("backbone",)))


@keras.saving.register_keras_serializable(package=PACKAGE)
class NonMaxSuppression(keras_cv.layers.NonMaxSuppression):
    """Keras-CV's box decoder (same arguments and outputs), also on torch
    without torchvision: there Keras-CV calls `torchvision.ops.nms`, a package
    the torch backend does not otherwise need; this runs Keras-CV's own
    keras-ops NMS instead (the one it runs on JAX). TensorFlow and JAX are
    Keras-CV's code unchanged."""

    def call(self, box_prediction, class_prediction, images=None, image_shape=None):
        if keras.backend.backend() != "torch":
            return super().call(box_prediction, class_prediction, images=images,
                                image_shape=image_shape)
        from keras import ops
        from keras_cv.src import bounding_box
        from keras_cv.src.layers.object_detection.non_max_suppression import non_max_suppression

        work = "yxyx"  # Keras-CV's NMS reads yxyx boxes
        if bounding_box.is_relative(self.bounding_box_format):
            work = bounding_box.as_relative(work)
        boxes = bounding_box.convert_format(box_prediction, source=self.bounding_box_format,
                                            target=work, images=images, image_shape=image_shape)
        scores = ops.sigmoid(class_prediction) if self.from_logits else class_prediction
        confidence = ops.max(scores, axis=-1)
        idx, valid = non_max_suppression(boxes, confidence, max_output_size=self.max_detections,
                                         iou_threshold=self.iou_threshold,
                                         score_threshold=self.confidence_threshold)
        boxes = ops.take_along_axis(boxes, ops.expand_dims(idx, -1), axis=1)
        boxes = bounding_box.convert_format(ops.reshape(boxes, (-1, self.max_detections, 4)),
                                            source=work, target=self.bounding_box_format,
                                            images=images, image_shape=image_shape)
        scores = ops.take_along_axis(scores, ops.expand_dims(idx, -1), axis=1)
        return bounding_box.mask_invalid_detections(
            {"boxes": boxes, "confidence": ops.take_along_axis(confidence, idx, axis=1),
             "classes": ops.argmax(scores, axis=-1), "num_detections": valid},
            output_ragged=False)
