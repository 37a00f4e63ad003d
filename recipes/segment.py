"""Semantic segmentation with a KerasHub head on the pre-trained ViT (or the
same ViT at random init, or a ResNet-18 from scratch) on canvases of
Fashion-MNIST items the package makes itself (no download), or on your own
images (--data coco:... / masks:..., docs/data.md). Prints mIoU
(classes + background) on validation and test canvases.

    python recipes/segment.py                                       # DeepLabV3 on the shipped backbone
    python recipes/segment.py --init random --output runs/segment_random
    python recipes/segment.py --init resnet18 --output runs/segment_resnet
    python recipes/segment.py --head segformer --steps 2000 --train-canvases 5000
    python recipes/segment.py --head upernet                        # the paper's head
    python recipes/segment.py --data coco:train.json --test-data coco:val.json --image-size 64
    python recipes/segment.py --data masks:IMAGES:MASKS     # index PNGs: 0 background, 255 ignore

One run per --output folder (default runs/segment): config.json (every value
with its source), checkpoints while it runs (a stopped run resumes),
log.csv, results.json, predictions.png (test canvases: canvas | truth |
prediction; also in TensorBoard), model.keras; --export saved_model adds a
SavedModel that takes uint8 images and returns class masks.

Backbone: keras_conmim.integrations.kerashub.ViTPyramidBackbone (ViTDet's simple pyramid;
the encoder runs at the canvas size with resampled position tables), or
KerasHub's ResNetBackbone as ResNet-18. Heads: KerasHub's
DeepLabV3ImageSegmenter (ASPP on P4, decoder on P2),
SegFormerImageSegmenter (ViT only: four levels with learned projections), or
keras_conmim.UperNetSegmenter (the paper's head: pyramid pooling on P4, FPN
and fusion over P2-P4).
Recipe: keras_conmim.presets.DOWNSTREAM (AdamW, warmup + cosine, heads at
--lr, the encoder at --backbone-lr-scale of it with --layer-decay, drop
path; random init and ResNet train every weight at --lr).
"""

import sys

import recipe_main  # stdlib only: chooses the backend before Keras loads

if __name__ == "__main__":
    recipe_main.choose_backend()
import downstream  # noqa: E402

HEADS = ("deeplabv3", "segformer", "upernet")


def check_head(head, init, recipe):
    from keras_conmim.errors import ConfigError

    if head == "segformer" and init == "resnet18":
        raise ConfigError("--head segformer reads a MiT-style four-level ViT pyramid; with "
                          "--init resnet18 use --head deeplabv3")


def resnet18(image_shape):
    """KerasHub's ResNet as ResNet-18 (basic blocks 2-2-2-2, widths 64-512),
    random init; `pyramid_outputs` P2-P5."""
    import keras_hub

    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[2, 2, 2, 2],
        stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block", image_shape=image_shape)


def build(head, encoder, image_shape, num_classes, recipe):
    """(segmenter with `num_classes` + 1 outputs, the ViT inside it or None)."""
    import keras_hub

    from keras_conmim.integrations.kerashub import ViTPyramidBackbone

    if head == "upernet":
        from keras_conmim.downstream.upernet import UperNetSegmenter

        if encoder is None:
            backbone, vit = resnet18(image_shape), None
        else:
            backbone = ViTPyramidBackbone(encoder, image_shape=image_shape, min_level=2,
                                          max_level=4)
            vit = backbone.encoder
        return UperNetSegmenter(backbone, num_classes=num_classes + 1), vit
    if head == "segformer":
        d = encoder.hidden_dim
        backbone = ViTPyramidBackbone(encoder, image_shape=image_shape, level_naming="mit",
                                      pyramid_channels=(d // 4, d // 2, 3 * d // 4, d))
        model = keras_hub.models.SegFormerImageSegmenter(
            backbone=keras_hub.models.SegFormerBackbone(image_encoder=backbone,
                                                        projection_filters=d),
            num_classes=num_classes + 1)
        return model, backbone.encoder
    if encoder is None:
        backbone, vit = resnet18(image_shape), None
    else:
        backbone = ViTPyramidBackbone(encoder, image_shape=image_shape, max_level=4)
        vit = backbone.encoder
    model = keras_hub.models.DeepLabV3ImageSegmenter(
        backbone=keras_hub.models.DeepLabV3Backbone(
            image_encoder=backbone, spatial_pyramid_pooling_key="P4", upsampling_size=4,
            dilation_rates=[1, 2, 3], low_level_feature_key="P2", image_shape=image_shape),
        num_classes=num_classes + 1)
    return model, vit


def compile_args(keras, head):
    """Cross-entropy over the pixels; those marked 255 (padding, COCO crowd
    regions, a mask's own ignore value) add nothing."""
    from keras_conmim.downstream.metrics import IGNORE

    return dict(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                                ignore_class=IGNORE))


def predict(model, images):
    """Class masks `[n, S, S]` (0 = background)."""
    import numpy as np

    logits = model.predict(images, batch_size=64, verbose=0)
    return np.argmax(logits, -1).astype("int32")


def score(masks, canvases, num_classes):
    import numpy as np

    from keras_conmim.downstream.metrics import mean_iou

    from keras_conmim.downstream.metrics import IGNORE

    counted = canvases["masks"] != IGNORE
    return dict(miou=round(100 * mean_iou(masks, canvases["masks"], num_classes + 1), 2),
                pixel_accuracy=round(100 * float(np.mean((masks == canvases["masks"])[counted])),
                                     2))


def result_line(r):
    return (f"{r['head']} from {r['init']}: test mIoU {r['test']['miou']:.2f}% (validation "
            f"{r['val']['miou']:.2f}%), {r['test_canvases']} test canvases")


def main(argv=None):
    return downstream.main("segment", sys.modules[__name__], argv)


if __name__ == "__main__":
    recipe_main.run(main)
