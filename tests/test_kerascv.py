"""Keras-CV adapter: the pyramid backbone under RetinaNet, YOLOV8Detector,
DeepLabV3Plus and SegFormer (built from their classes, never from presets)."""


import keras
import numpy as np
import pytest

from model_checks import check_fit_changes_weights
from conftest import randomize_weights, tiny_resnet, tiny_vit, to_numpy

keras_cv = pytest.importorskip("keras_cv")
from keras_conmim.integrations.kerascv import ViTCVBackbone  # noqa: E402

SIZE = 32


def _backbone(**kwargs):
    vit = tiny_vit()
    randomize_weights(vit, scale=0.1)
    return ViTCVBackbone(vit, image_shape=(SIZE, SIZE, 1), **kwargs)


def _images(n=2):
    return np.random.RandomState(0).uniform(0, 255, (n, SIZE, SIZE, 1)).astype("float32")


# (Keras-CV 0.9's RetinaNet on Keras 3 reports a loss of exactly 0 when one
# of these boxes matches an anchor, whatever the backbone; these do not.)
BOXES = {"boxes": np.array([[[2, 2, 12, 12], [10, 10, 30, 30]]] * 2, "float32"),
         "classes": np.array([[0, 2]] * 2, "float32")}


# XLA on JAX, where op by op a head's single step takes 20-45 s (measured:
# DeepLabV3+ / SegFormer / YOLOV8 about a third faster compiled; RetinaNet
# slower, so it stays op by op); the other backends op by op.
JIT = keras.backend.backend() == "jax"


def test_pyramid_level_inputs_name_layers_at_true_strides():
    backbone = _backbone()
    assert backbone.pyramid_level_inputs == {f"P{n}": f"P{n}" for n in (2, 3, 4, 5)}
    for level, name in backbone.pyramid_level_inputs.items():
        n = int(level[1:])
        assert tuple(backbone.get_layer(name).output.shape[1:3]) == (SIZE // 2**n,) * 2


@pytest.mark.parametrize("head", ["deeplab_v3_plus", "segformer"])
def test_segmentation_heads_train(head):
    if head == "segformer":  # names its layers by width: distinct widths per level
        model = keras_cv.models.SegFormer(num_classes=3,
                                          backbone=_backbone(pyramid_channels=(8, 12, 16, 20)))
    else:
        model = keras_cv.models.DeepLabV3Plus(num_classes=3, backbone=_backbone())
    x = _images()
    assert model(x).shape == (2, SIZE, SIZE, 3)
    model.compile(optimizer="adam", jit_compile=JIT,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    check_fit_changes_weights(model, x, np.random.RandomState(0).randint(0, 3, (2, SIZE, SIZE, 1)))


@pytest.mark.parametrize("head", ["retinanet", "yolo_v8"])
def test_detection_heads_train(head):
    if head == "retinanet":
        model = keras_cv.models.RetinaNet(num_classes=3, bounding_box_format="xyxy",
                                          backbone=_backbone())
        model.compile(classification_loss="focal", box_loss="smoothl1", optimizer="adam",
                      jit_compile=False)
    else:
        model = keras_cv.models.YOLOV8Detector(num_classes=3, bounding_box_format="xyxy",
                                               backbone=_backbone(), fpn_depth=1)
        model.compile(classification_loss="binary_crossentropy", box_loss="ciou",
                      optimizer="adam", jit_compile=JIT)
    check_fit_changes_weights(model, _images(), BOXES)


def test_yolo_v8_trains_on_a_kerashub_resnet():
    """KerasHub's ResNet (the downstream benchmark's scratch baseline) under
    Keras-CV's YOLOv8, through KerasHubCVBackbone; a backbone without
    pyramid_outputs is refused by name."""
    pytest.importorskip("keras_hub")
    from keras_conmim.integrations.kerascv import KerasHubCVBackbone

    resnet = tiny_resnet(SIZE)
    model = keras_cv.models.YOLOV8Detector(num_classes=3, bounding_box_format="xyxy",
                                           backbone=KerasHubCVBackbone(resnet), fpn_depth=1)
    model.compile(classification_loss="binary_crossentropy", box_loss="ciou", optimizer="adam",
                  jit_compile=JIT)
    check_fit_changes_weights(model, _images(), BOXES)
    with pytest.raises(ValueError, match="no pyramid_outputs"):
        KerasHubCVBackbone(keras.Sequential([keras.Input((SIZE, SIZE, 1)), keras.layers.Dense(2)]))


def _greedy_nms(boxes, scores, iou_threshold, score_threshold):
    """Plain numpy NMS over yxyx boxes (one image): the indices kept, best first."""
    from keras_conmim.downstream.metrics import box_iou

    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] > score_threshold]
    kept = []
    for i in order:
        if not kept or np.all(box_iou(boxes[kept], boxes[i]) <= iou_threshold):
            kept.append(i)
    return kept


def test_box_decoder_runs_on_every_backend_and_equals_plain_nms():
    # Keras-CV's own decoder needs torchvision on torch; ours does not (the
    # YOLOv8 downstream recipe uses it), and keeps what greedy NMS keeps.
    from keras_conmim.integrations.kerascv import NonMaxSuppression

    rng = np.random.RandomState(1)
    corner = rng.uniform(0, 40, (2, 30, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(4, 20, (2, 30, 2))], -1).astype("float32")
    classes = rng.uniform(0, 1, (2, 30, 3)).astype("float32")
    decoder = NonMaxSuppression(bounding_box_format="yxyx", from_logits=False, iou_threshold=0.5,
                                confidence_threshold=0.3, max_detections=8)
    out = {k: to_numpy(v) for k, v in decoder(boxes, classes).items()}
    for b in range(2):
        kept = _greedy_nms(boxes[b], classes[b].max(-1), 0.5, 0.3)[:8]
        n = int(out["num_detections"][b])
        assert n == len(kept)
        np.testing.assert_allclose(out["boxes"][b, :n], boxes[b, kept], atol=1e-5)
        np.testing.assert_allclose(out["confidence"][b, :n], classes[b, kept].max(-1), atol=1e-6)
        np.testing.assert_array_equal(out["classes"][b, :n], classes[b, kept].argmax(-1))
        assert (out["classes"][b, n:] == -1).all()
    again = keras.layers.deserialize(keras.layers.serialize(decoder))
    assert type(again) is NonMaxSuppression and again.max_detections == 8
