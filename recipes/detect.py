"""Object detection with KerasHub's RetinaNet on a pre-trained backbone, and
the same from random init, on Fashion-MNIST items pasted on larger canvases
(the package builds the data; no download). Prints COCO-style box mAP.

    python recipes/detect.py                                   # both inits
    python recipes/detect.py --epochs 10 --train-canvases 5000

Backbone: keras_conmim.kerashub.ViTPyramidBackbone (levels P3-P5 feed
RetinaNet's FPN). Anchors: 3 scales x 3 aspect ratios per level, base size
2 * stride. Detections: KerasHub's NonMaxSuppression (IoU 0.5, confidence
>= 0.05, at most 20 per canvas); mAP@[.5:.95] and AP50 from
keras_conmim.downstream_metrics.coco_map.
"""

import recipe_main  # stdlib only: chooses the backend before Keras loads

if __name__ == "__main__":
    recipe_main.choose_backend()
import downstream  # noqa: E402


def build(encoder, image_shape, num_classes):
    import keras_hub

    from keras_conmim.kerashub import ViTPyramidBackbone

    backbone = ViTPyramidBackbone(encoder, image_shape=image_shape)
    anchors = keras_hub.layers.AnchorGenerator(
        bounding_box_format="yxyx", min_level=3, max_level=5, num_scales=3,
        aspect_ratios=[0.5, 1.0, 2.0], anchor_size=2)
    decoder = keras_hub.layers.NonMaxSuppression(
        bounding_box_format="yxyx", from_logits=True, iou_threshold=0.5,
        confidence_threshold=0.05, max_detections=20)
    return keras_hub.models.RetinaNetObjectDetector(
        backbone=keras_hub.models.RetinaNetBackbone(
            image_encoder=backbone, min_level=3, max_level=5, use_p5=False,
            image_shape=image_shape),
        anchor_generator=anchors, num_classes=num_classes, bounding_box_format="yxyx",
        prediction_decoder=decoder)


def main(argv=None):
    p = downstream.parser(__doc__.splitlines()[0])
    args = downstream.check(p, p.parse_args(argv))
    image_shape, train, test, num_classes, steps = downstream.prepare(args)
    import keras
    import numpy as np

    from keras_conmim.downstream_metrics import coco_map

    x = train["images"].astype("float32")
    y = {"boxes": train["boxes"], "labels": train["classes"]}
    results = {}
    for init in args.inits:
        keras.utils.set_random_seed(args.seed)
        model = build(downstream.encoder_for(init, args), image_shape, num_classes)
        model.compile(optimizer=downstream.optimizer(args, steps * args.epochs))
        model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs,
                  steps_per_epoch=args.steps_per_epoch, shuffle=True, verbose=2)
        out = model.predict(test["images"].astype("float32"), batch_size=64, verbose=0)
        out = {k: np.asarray(keras.ops.convert_to_numpy(v)) for k, v in out.items()}
        valid = np.arange(out["boxes"].shape[1])[None] < out["num_detections"][:, None]
        scores = np.where(valid, out["confidence"], -1.0)
        labels = np.where(valid, out["labels"], -1)
        metrics = coco_map(out["boxes"], scores, labels, test["boxes"], test["classes"])
        results[init] = metrics
        print(f"RetinaNet from {init}: test box mAP@[.5:.95] {100 * metrics['map']:.2f}%, "
              f"AP50 {100 * metrics['ap50']:.2f}% ({len(test['images'])} canvases)", flush=True)
    print("done: detection mAP " + ", ".join(f"{k} {100 * v['map']:.2f}%"
                                               for k, v in results.items()))


if __name__ == "__main__":
    recipe_main.run(main)
