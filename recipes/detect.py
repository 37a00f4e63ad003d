"""Object detection with Keras-CV's YOLOV8Detector (or KerasHub's RetinaNet)
on the pre-trained ViT (or the same ViT at random init, or a ResNet-18 from
scratch) on canvases of Fashion-MNIST items the package makes itself (no
download), or on a COCO file of your own (--data coco:ANNOTATIONS.json[:IMAGE_DIR],
docs/data.md). Prints COCO box mAP@[.5:.95] and AP50 on validation and test
canvases.

    python recipes/detect.py                                # YOLOv8 on the shipped backbone, 64 px
    python recipes/detect.py --init random --output runs/detect_random
    python recipes/detect.py --init resnet18 --output runs/detect_resnet   # YOLOv8 on a ResNet-18
    python recipes/detect.py --head retinanet               # KerasHub's RetinaNet (P3-P4), 48 px
    python recipes/detect.py --data coco:train.json --test-data coco:val.json --image-size 64

One run per --output folder (default runs/detect), with the files of
recipes/segment.py; --export saved_model (TensorFlow backend) writes a SavedModel
that takes uint8 images, one at a time, and returns boxes, classes, scores and
their count after non-maximum suppression.

Heads: YOLOv8 by default (the benchmark's best: 47% box mAP at 500 canvases
where RetinaNet reaches 15%), on keras_conmim.integrations.kerascv.ViTCVBackbone (P3-P5,
so the canvas is a multiple of 32: 64 px unless --canvas-size / --image-size
says otherwise); RetinaNet on keras_conmim.integrations.kerashub.ViTPyramidBackbone (P3-P4:
strides 8 and 16, the sizes of 10-28 px items). --init resnet18 puts KerasHub's
ResNet-18 under either head (under YOLOv8 through
keras_conmim.integrations.kerascv.KerasHubCVBackbone).
RetinaNet's anchors: 3 scales x 3 aspect ratios per level, base size
2 x stride (16-25 px on P3, 32-50 px on P4). Detections: non-maximum
suppression at IoU 0.5, confidence >= 0.05, at most 20 per canvas;
mAP@[.5:.95] and AP50 from keras_conmim.downstream.metrics.coco_map
(pycocotools' matching and 101-point interpolation).
"""

import sys

import recipe_main  # stdlib only: chooses the backend before Keras loads

if __name__ == "__main__":
    recipe_main.choose_backend()
import downstream  # noqa: E402

HEADS = ("yolov8", "retinanet")
# What a head needs of the recipe, when neither a flag nor --config sets it.
HEAD_RECIPE = {"yolov8": {"values": {"canvas_size": 64},
                          "why": "yolov8 reads P3-P5: a multiple of 32"}}
LABEL_KEYS = {"yolov8": "classes"}  # Keras-CV's name for the box classes (KerasHub: "labels")
MAX_DETECTIONS = 20


def check_head(head, init, recipe):
    from keras_conmim.errors import ConfigError

    if head == "yolov8" and recipe.canvas_size % 32:
        raise ConfigError(f"--head yolov8 reads P3-P5 (stride 32): canvas_size "
                          f"{recipe.canvas_size} must be a multiple of 32 (--canvas-size 64)")


def build(head, encoder, image_shape, num_classes, recipe):
    """(detector, the ViT inside it or None)."""
    if head == "yolov8":
        import keras_cv

        from keras_conmim.integrations.kerascv import (KerasHubCVBackbone, NonMaxSuppression,
                                                       ViTCVBackbone)

        if encoder is None:
            import segment

            backbone = KerasHubCVBackbone(segment.resnet18(image_shape))
        else:
            backbone = ViTCVBackbone(encoder, image_shape=image_shape, min_level=3, max_level=5)
        model = keras_cv.models.YOLOV8Detector(
            num_classes=num_classes, bounding_box_format="yxyx", backbone=backbone, fpn_depth=1,
            prediction_decoder=NonMaxSuppression(
                bounding_box_format="yxyx", from_logits=False, iou_threshold=0.5,
                confidence_threshold=0.05, max_detections=MAX_DETECTIONS))
        return model, None if encoder is None else backbone.encoder
    import keras_hub

    from keras_conmim.integrations.kerashub import ViTPyramidBackbone

    if encoder is None:
        import segment

        backbone, vit = segment.resnet18(image_shape), None
    else:
        backbone = ViTPyramidBackbone(encoder, image_shape=image_shape, min_level=3, max_level=4)
        vit = backbone.encoder
    anchors = keras_hub.layers.AnchorGenerator(
        bounding_box_format="yxyx", min_level=3, max_level=4, num_scales=3,
        aspect_ratios=[0.5, 1.0, 2.0], anchor_size=2)
    decoder = keras_hub.layers.NonMaxSuppression(
        bounding_box_format="yxyx", from_logits=True, iou_threshold=0.5,
        confidence_threshold=0.05, max_detections=MAX_DETECTIONS)
    model = keras_hub.models.RetinaNetObjectDetector(
        backbone=keras_hub.models.RetinaNetBackbone(
            image_encoder=backbone, min_level=3, max_level=4, use_p5=False,
            image_shape=image_shape),
        anchor_generator=anchors, num_classes=num_classes, bounding_box_format="yxyx",
        prediction_decoder=decoder)
    return model, vit


def compile_args(keras, head):
    """Each head's own losses: RetinaNet's defaults (focal + Huber), YOLOv8's
    binary cross-entropy + CIoU (Keras-CV names them; it has no default)."""
    if head == "yolov8":
        return dict(classification_loss="binary_crossentropy", box_loss="ciou")
    return {}


def predict(model, images):
    """`{"boxes" [n, k, 4] yxyx, "scores" [n, k], "classes" [n, k]}`, rows past
    a canvas's detections scored -1 / class -1."""
    import keras
    import numpy as np

    # Full batches only: KerasHub's non-maximum suppression sizes its outputs by the
    # static batch, which TensorFlow leaves unknown for a short last batch.
    n, batch = len(images), 32
    padded = np.concatenate([images, np.zeros((-n % batch, *images.shape[1:]), images.dtype)])
    out = model.predict(padded, batch_size=batch, verbose=0)
    out = {k: np.asarray(keras.ops.convert_to_numpy(v))[:n] for k, v in out.items()}
    classes = out.get("labels", out.get("classes"))
    valid = np.arange(out["boxes"].shape[1])[None] < out["num_detections"][:, None]
    return {"boxes": out["boxes"], "scores": np.where(valid, out["confidence"], -1.0),
            "classes": np.where(valid, classes, -1).astype("int32")}


def score(pred, canvases, num_classes):
    from keras_conmim.downstream.metrics import coco_map

    m = coco_map(pred["boxes"], pred["scores"], pred["classes"], canvases["boxes"],
                 canvases["classes"], canvases.get("crowd_boxes"), canvases.get("crowd_classes"))
    return dict(map=round(100 * m["map"], 2), ap50=round(100 * m["ap50"], 2))


def result_line(r):
    return (f"{r['head']} from {r['init']}: test box mAP@[.5:.95] {r['test']['map']:.2f}%, "
            f"AP50 {r['test']['ap50']:.2f}% (validation {r['val']['map']:.2f}%), "
            f"{r['test_canvases']} test canvases")


def main(argv=None):
    return downstream.main("detect", sys.modules[__name__], argv)


if __name__ == "__main__":
    recipe_main.run(main)
