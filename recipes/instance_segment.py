"""Instance segmentation (boxes, classes, scores and one mask per object) with
keras_conmim.InstanceSegmenter on the pre-trained ViT (or the same ViT at
random init, or a ResNet-18 from scratch) on canvases of Fashion-MNIST items
the package makes itself (no download), or on a COCO file with masks of your
own (--data coco:ANNOTATIONS.json[:IMAGE_DIR], docs/data.md). Prints COCO mask
and box mAP@[.5:.95] and AP50 on validation and test canvases.

    python recipes/instance_segment.py                              # on the shipped backbone
    python recipes/instance_segment.py --init random --output runs/instance_random
    python recipes/instance_segment.py --init resnet18 --output runs/instance_resnet
    python recipes/instance_segment.py --data coco:train.json --test-data coco:val.json
    python recipes/instance_segment.py --backend tensorflow --export saved_model

One run per --output folder (default runs/instance), with the files of
recipes/segment.py; predictions.png shows each object's mask in its own
colour with its box in its class colour. --export saved_model (TensorFlow
backend) writes a SavedModel that takes uint8 images and returns
boxes, classes, scores, masks (uint8 [B, K, H, W]) and their count.

Head ("yolact"): YOLACT's prototype masks and per-object coefficients on an
FCOS-style anchor-free detector over P3-P4, prototypes from P2
(keras_conmim.downstream.instance); backbone keras_conmim.integrations.kerashub.ViTPyramidBackbone
(P2-P4) or KerasHub's ResNet-18. Detections: Fast NMS per class at IoU 0.5,
confidence >= 0.05, at most 20 per canvas. Metrics:
keras_conmim.downstream.metrics.coco_mask_map / coco_map (pycocotools' segm
and bbox evaluation). results.json: test.mask_map, test.box_map (percent).
"""

import sys

import recipe_main  # stdlib only: chooses the backend before Keras loads

if __name__ == "__main__":
    recipe_main.choose_backend()
import downstream  # noqa: E402

HEADS = ("yolact",)


def check_head(head, init, recipe):
    from keras_conmim.errors import ConfigError

    if recipe.canvas_size % 16:
        raise ConfigError(f"canvas_size {recipe.canvas_size}: the head reads P4 (stride 16); "
                          "use a multiple of 16")


def build(head, encoder, image_shape, num_classes, recipe):
    """(instance segmenter, the ViT inside it or None)."""
    from keras_conmim.downstream.instance import InstanceSegmenter

    if encoder is None:
        import segment

        backbone, vit = segment.resnet18(image_shape), None
    else:
        from keras_conmim.integrations.kerashub import ViTPyramidBackbone

        backbone = ViTPyramidBackbone(encoder, image_shape=image_shape, min_level=2, max_level=4)
        vit = backbone.encoder
    return InstanceSegmenter(backbone, num_classes=num_classes), vit


def compile_args(keras, head):
    """The model's own losses (focal classes, GIoU boxes, cropped mask BCE)."""
    return {}


def predict(model, images):
    """`{"boxes", "scores", "classes", "masks" [n, K, S, S], "num_detections"}`
    as numpy; rows past a canvas's detections scored -1 / class -1."""
    import keras
    import numpy as np

    out = model.predict(images, batch_size=32, verbose=0)
    return {k: np.asarray(keras.ops.convert_to_numpy(v)) for k, v in out.items()}


def crowd_regions(canvases):
    """COCO crowd regions as masks `[n, C, S, S]`: the ignored pixels (255)
    inside each crowd box (None when the set has none)."""
    import numpy as np

    classes = canvases.get("crowd_classes")
    if classes is None or not (np.asarray(classes) >= 0).any():
        return None
    size = canvases["instances"].shape[1]
    centre = np.arange(size) + 0.5
    b = np.asarray(canvases["crowd_boxes"])[..., None]
    inside = (((centre >= b[:, :, 0]) & (centre < b[:, :, 2]))[..., :, None]
              & ((centre >= b[:, :, 1]) & (centre < b[:, :, 3]))[..., None, :])
    return inside & (np.asarray(canvases["instances"]) == 255)[:, None]


def score(pred, canvases, num_classes):
    """Mask mAP / AP50 and, as recipes/detect.py scores them, box mAP / AP50 (%)."""
    import detect
    from keras_conmim.downstream.metrics import coco_mask_map

    masks = coco_mask_map(pred["masks"], pred["scores"], pred["classes"], canvases["instances"],
                          canvases["classes"], crowd_regions(canvases),
                          canvases.get("crowd_classes"))
    boxes = detect.score(pred, canvases, num_classes)
    return dict(mask_map=round(100 * masks["map"], 2), mask_ap50=round(100 * masks["ap50"], 2),
                box_map=boxes["map"], box_ap50=boxes["ap50"])


def result_line(r):
    return (f"{r['head']} from {r['init']}: test mask mAP@[.5:.95] {r['test']['mask_map']:.2f}% "
            f"(AP50 {r['test']['mask_ap50']:.2f}%), box mAP {r['test']['box_map']:.2f}%; "
            f"validation mask mAP {r['val']['mask_map']:.2f}%, {r['test_canvases']} test canvases")


def main(argv=None):
    return downstream.main("instance", sys.modules[__name__], argv)


if __name__ == "__main__":
    recipe_main.run(main)
