"""KerasHub adapters: ViT -> ViTBackbone, the pyramid backbone under
KerasHub's detection / segmentation heads, the ImageClassifier task, presets."""


import keras
import numpy as np
import pytest

from model_checks import check_fit_changes_weights
from conftest import randomize_weights, tiny_vit, to_numpy

keras_hub = pytest.importorskip("keras_hub")
from keras_conmim.integrations.kerashub import (  # noqa: E402
    ViTPyramidBackbone, ViTPyramidImageClassifier, to_keras_hub_vit)

SIZE = 32


def _images(n=2, size=SIZE, channels=1, seed=0):
    return np.random.RandomState(seed).uniform(0, 255, (n, size, size, channels)).astype("float32")


def _encoder(**kwargs):
    vit = tiny_vit(**kwargs)
    randomize_weights(vit, scale=0.1)
    return vit


def test_absolute_position_encoder_becomes_keras_hub_vit():
    vit = _encoder(image_shape=(16, 16, 3), position_embedding="absolute")
    hub = to_keras_hub_vit(vit)
    assert isinstance(hub, keras_hub.models.ViTBackbone)
    x = np.random.RandomState(1).standard_normal((2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(to_numpy(hub(x)), to_numpy(vit(x)), atol=1e-5)
    classifier = keras_hub.models.ViTImageClassifier(backbone=hub, num_classes=4)
    assert classifier(x).shape == (2, 4)
    with pytest.raises(ValueError, match="absolute"):
        to_keras_hub_vit(_encoder())


@pytest.mark.parametrize("patch_size", [4, 8])
def test_pyramid_levels_have_true_strides(patch_size):
    vit = _encoder(patch_size=patch_size)
    backbone = ViTPyramidBackbone(vit, image_shape=(SIZE, SIZE, 1))
    assert isinstance(backbone, keras_hub.models.FeaturePyramidBackbone)
    shapes = {k: tuple(v.shape[1:]) for k, v in backbone.pyramid_outputs.items()}
    assert shapes == {f"P{n}": (SIZE // 2**n, SIZE // 2**n, 16) for n in (2, 3, 4, 5)}
    # parameter-free: the backbone's weights are the encoder's
    assert len(backbone.weights) == len(vit.weights)
    grid = to_numpy(backbone(_images()))
    assert grid.shape == (2, SIZE // patch_size, SIZE // patch_size, 16)
    levels = keras.Model(backbone.inputs, backbone.pyramid_outputs)(_images())
    own = f"P{int(np.log2(patch_size))}"
    np.testing.assert_allclose(to_numpy(levels[own]), grid, atol=1e-6)


def test_pyramid_backbone_preset_round_trip(tmp_path):
    backbone = ViTPyramidBackbone(_encoder(), image_shape=(SIZE, SIZE, 1), pyramid_channels=8)
    randomize_weights(backbone, seed=3, scale=0.1)  # the neck too
    backbone.save_to_preset(str(tmp_path))
    loaded = keras_hub.models.Backbone.from_preset(str(tmp_path))
    assert isinstance(loaded, ViTPyramidBackbone)
    x = _images()
    np.testing.assert_allclose(to_numpy(loaded(x)), to_numpy(backbone(x)), atol=1e-6)
    ours = keras.Model(backbone.inputs, backbone.pyramid_outputs)(x)
    theirs = keras.Model(loaded.inputs, loaded.pyramid_outputs)(x)
    for key in ours:
        np.testing.assert_allclose(to_numpy(theirs[key]), to_numpy(ours[key]), atol=1e-5)


def _segmenter(head):
    if head == "segformer":  # MiT names (finest = P1) and a distinct width per level
        backbone = ViTPyramidBackbone(_encoder(), image_shape=(SIZE, SIZE, 1),
                                      level_naming="mit", pyramid_channels=(8, 12, 16, 20))
        assert sorted(backbone.pyramid_outputs) == ["P1", "P2", "P3", "P4"]
        return keras_hub.models.SegFormerImageSegmenter(
            backbone=keras_hub.models.SegFormerBackbone(image_encoder=backbone,
                                                        projection_filters=16),
            num_classes=3)
    backbone = ViTPyramidBackbone(_encoder(), image_shape=(SIZE, SIZE, 1))
    return keras_hub.models.DeepLabV3ImageSegmenter(
        backbone=keras_hub.models.DeepLabV3Backbone(
            image_encoder=backbone, spatial_pyramid_pooling_key="P4", upsampling_size=4,
            dilation_rates=[1, 2], low_level_feature_key="P2", image_shape=(SIZE, SIZE, 1)),
        num_classes=3)


@pytest.mark.parametrize("head", ["deeplab_v3", "segformer"])
def test_segmenters_train_on_the_pyramid(head):
    model = _segmenter(head)
    x = _images()
    assert model(x).shape == (2, SIZE, SIZE, 3)
    model.compile(optimizer="adam", jit_compile=False,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    check_fit_changes_weights(model, x, np.random.RandomState(0).randint(0, 3, (2, SIZE, SIZE, 1)),
                              train_on_batch=True)


def test_retinanet_detector_trains_on_the_pyramid():
    backbone = ViTPyramidBackbone(_encoder(), image_shape=(SIZE, SIZE, 1))
    anchors = keras_hub.layers.AnchorGenerator(
        bounding_box_format="yxyx", min_level=3, max_level=5, num_scales=1,
        aspect_ratios=[1.0], anchor_size=1)
    model = keras_hub.models.RetinaNetObjectDetector(
        backbone=keras_hub.models.RetinaNetBackbone(
            image_encoder=backbone, min_level=3, max_level=5, use_p5=False,
            image_shape=(SIZE, SIZE, 1)),
        anchor_generator=anchors, num_classes=3)
    x = _images()
    out = model(x)
    assert out["cls_logits"].shape == (2, 16 + 4 + 1, 3)
    model.compile(jit_compile=False)
    y = {"boxes": np.array([[[2, 2, 10, 10], [8, 8, 24, 24]]] * 2, "float32"),
         "labels": np.array([[0, 2]] * 2, "int32")}
    check_fit_changes_weights(model, x, y)


def test_image_classifier_task_and_preset(tmp_path):
    model = ViTPyramidImageClassifier(backbone=ViTPyramidBackbone(_encoder()), num_classes=5)
    x = _images(4, size=16)
    assert model(x).shape == (4, 5)
    model.compile(optimizer="adam", jit_compile=False,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    check_fit_changes_weights(model, x, np.arange(4), train_on_batch=True)
    model.save_to_preset(str(tmp_path))
    loaded = keras_hub.models.ImageClassifier.from_preset(str(tmp_path))
    assert isinstance(loaded, ViTPyramidImageClassifier)
    np.testing.assert_allclose(to_numpy(loaded(x)), to_numpy(model(x)), atol=1e-5)


def test_bad_pyramid_arguments():
    with pytest.raises(ValueError, match="power of two"):
        ViTPyramidBackbone(tiny_vit(image_shape=(18, 18, 1), patch_size=6))
    with pytest.raises(ValueError, match="pyramid_channels needs 4"):
        ViTPyramidBackbone(tiny_vit(), pyramid_channels=(8, 8))
    with pytest.raises(ValueError, match="level_naming"):
        ViTPyramidBackbone(tiny_vit(), level_naming="resnet")
    with pytest.raises(ValueError, match="channels"):
        ViTPyramidBackbone(tiny_vit(), image_shape=(32, 32, 3))
