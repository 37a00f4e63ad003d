"""Semantic segmentation with a KerasHub head on a pre-trained backbone, and
the same from random init, on Fashion-MNIST items pasted on larger canvases
(the package builds the data; no download). Prints mIoU (classes + background).

    python recipes/segment.py                                  # DeepLabV3, both inits
    python recipes/segment.py --head segformer --epochs 10
    python recipes/segment.py --encoder runs/pretrain/teacher_encoder.keras --init pretrained

Backbone: keras_conmim.kerashub.ViTPyramidBackbone (simple ViTDet pyramid,
encoder run at the canvas size with resampled position tables). Heads:
keras_hub.models.DeepLabV3ImageSegmenter (ASPP on P4, decoder on P2) or
SegFormerImageSegmenter (all four levels, learned per-level projections).
AdamW with warmup + cosine; the whole network is trained.
"""

import recipe_main  # stdlib only: chooses the backend before Keras loads

if __name__ == "__main__":
    recipe_main.choose_backend()
import downstream  # noqa: E402

HEADS = ("deeplabv3", "segformer")


def build(head, encoder, image_shape, num_classes):
    import keras_hub

    from keras_conmim.kerashub import ViTPyramidBackbone

    if head == "segformer":
        d = encoder.hidden_dim
        backbone = ViTPyramidBackbone(encoder, image_shape=image_shape, level_naming="mit",
                                      pyramid_channels=(d // 4, d // 2, 3 * d // 4, d))
        return keras_hub.models.SegFormerImageSegmenter(
            backbone=keras_hub.models.SegFormerBackbone(image_encoder=backbone,
                                                        projection_filters=d),
            num_classes=num_classes)
    backbone = ViTPyramidBackbone(encoder, image_shape=image_shape)
    return keras_hub.models.DeepLabV3ImageSegmenter(
        backbone=keras_hub.models.DeepLabV3Backbone(
            image_encoder=backbone, spatial_pyramid_pooling_key="P4", upsampling_size=4,
            dilation_rates=[1, 2, 3], low_level_feature_key="P2", image_shape=image_shape),
        num_classes=num_classes)


def main(argv=None):
    p = downstream.parser(__doc__.splitlines()[0])
    p.add_argument("--head", choices=HEADS, default="deeplabv3")
    args = downstream.check(p, p.parse_args(argv))
    image_shape, train, test, num_classes, steps = downstream.prepare(args)
    import keras
    import numpy as np

    from keras_conmim.downstream_metrics import mean_iou

    x = train["images"].astype("float32")
    y = train["masks"][..., None]
    results = {}
    for init in args.inits:
        keras.utils.set_random_seed(args.seed)
        model = build(args.head, downstream.encoder_for(init, args), image_shape,
                      num_classes + 1)
        model.compile(optimizer=downstream.optimizer(args, steps * args.epochs),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs,
                  steps_per_epoch=args.steps_per_epoch, shuffle=True, verbose=2)
        logits = model.predict(test["images"].astype("float32"), batch_size=64, verbose=0)
        results[init] = 100 * mean_iou(np.argmax(logits, -1), test["masks"], num_classes + 1)
        print(f"{args.head} from {init}: test mIoU {results[init]:.2f}% "
              f"({len(test['images'])} canvases, {num_classes} classes + background)", flush=True)
    print("done: segmentation mIoU " + ", ".join(f"{k} {v:.2f}%" for k, v in results.items()))


if __name__ == "__main__":
    recipe_main.run(main)
