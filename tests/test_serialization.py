"""Every class the package registers with Keras goes through the same check
(`model_checks.check_serializable`): output shape, config round trip
(directly and through JSON), `.keras` save / load in safe mode with equal
weights and outputs. The initializer and the optimizer, which are not layers,
go through a layer / model that uses them."""

import numpy as np
import pytest

from conftest import to_numpy
from model_checks import check_serializable

TINY = dict(image_shape=(8, 8, 1), patch_size=4, num_layers=2, num_heads=2, hidden_dim=16,
            mlp_dim=32)
RNG = np.random.default_rng(0)
TOKENS = RNG.normal(size=(2, 5, 16)).astype("float32")
IMAGES_U8 = RNG.integers(0, 256, (2, 8, 8, 1)).astype("uint8")
IMAGES_F = IMAGES_U8.astype("float32")


def registered_classes():
    """Names of every class registered under the package (the wrappers for
    KerasHub / Keras-CV register when their modules are imported)."""
    import keras

    import keras_conmim  # noqa: F401  (registers every class of the package)

    for module in ("integrations.kerashub", "integrations.kerascv"):
        try:
            __import__(f"keras_conmim.{module}")
        except ImportError:
            pass
    return sorted(name.split(">", 1)[1] for name in keras.saving.get_custom_objects()
                  if name.startswith("keras_conmim>"))


def tiny_vit(**kwargs):
    import keras_conmim as kc

    return kc.ViT(**{**TINY, **kwargs})


CASES = {}


def case(name):
    def register(fn):
        CASES[name] = fn
        return fn
    return register


@case("PatchEmbedding")
def _patch_embedding(tmp_path):
    from keras_conmim.models.layers import PatchEmbedding

    check_serializable(PatchEmbedding(16, 4), IMAGES_F, (2, 4, 16), tmp_path)


@case("RelativePositionBias")
def _relative_bias(tmp_path):
    import keras

    from keras_conmim.models.layers import RelativePositionBias

    layer = RelativePositionBias((2, 2), 2)
    layer.build()
    layer.relative_position_bias_table.assign(  # non-zero, so the gather is checked
        keras.random.normal(layer.relative_position_bias_table.shape, seed=0))
    check_serializable(layer, None, (2, 5, 5), tmp_path)


@case("Attention")
def _attention(tmp_path):
    from keras_conmim.models.layers import Attention

    check_serializable(Attention(16, 2), TOKENS, (2, 5, 16), tmp_path, atol=1e-5)
    check_serializable(Attention(16, 2, fused=False), TOKENS, (2, 5, 16), tmp_path, atol=1e-5)


@case("TransformerBlock")
def _block(tmp_path):
    from keras_conmim.models.layers import TransformerBlock

    block = TransformerBlock(16, 2, 32, drop_path_rate=0.5, use_relative_position_bias=True,
                             grid_size=(2, 2))
    check_serializable(block, TOKENS, (2, 5, 16), tmp_path, atol=1e-5,
                       call=lambda layer, x: layer(x, training=True))  # drop path draws


@case("BoundedTruncatedNormal")
def _initializer(tmp_path):
    import keras

    from keras_conmim.models.layers import BoundedTruncatedNormal

    init = BoundedTruncatedNormal(stddev=0.5, bound=2.0, seed=3)
    revived = keras.initializers.deserialize(keras.initializers.serialize(init))
    assert type(revived) is BoundedTruncatedNormal and revived.get_config() == init.get_config()
    values = to_numpy(revived((1000,)))
    assert np.abs(values).max() <= 1.0 + 1e-6 and values.std() > 0.2
    np.testing.assert_array_equal(values, to_numpy(init((1000,))))
    layer = keras.layers.Dense(4, kernel_initializer=init)
    layer.build((None, 3))
    loaded = keras_dense_round_trip(layer, tmp_path)
    assert isinstance(loaded.kernel_initializer, BoundedTruncatedNormal)
    assert loaded.kernel_initializer.get_config() == init.get_config()


def keras_dense_round_trip(layer, tmp_path):
    import keras

    path = str(tmp_path / "dense.keras")
    keras.saving.save_model(layer, path)
    return keras.saving.load_model(path)


@case("TokenBatchNorm")
def _token_bn(tmp_path):
    from keras_conmim.models.projector import TokenBatchNorm

    layer = TokenBatchNorm()
    layer(TOKENS, training=True)  # moves the moving statistics
    check_serializable(layer, TOKENS, (2, 5, 16), tmp_path, atol=1e-5)


@case("ProjectionHead")
def _projection_head(tmp_path):
    from keras_conmim.models.projector import ProjectionHead

    check_serializable(ProjectionHead(24, 8), TOKENS, (2, 5, 8), tmp_path, atol=1e-5,
                       call=lambda layer, x: layer(x, training=True))


@case("RandomUnitMasking")
def _random_masking(tmp_path):
    from keras_conmim.models.masking import RandomUnitMasking

    check_serializable(RandomUnitMasking((4, 4), unit_size=2, seed=1), IMAGES_U8, (2, 16), tmp_path)


@case("BlockMasking")
def _block_masking(tmp_path):
    from keras_conmim.models.masking import BlockMasking

    check_serializable(BlockMasking((4, 4), mask_ratio=0.4, min_block_patches=2, seed=1),
                       IMAGES_U8, (2, 16), tmp_path)


@case("PairedViews")
def _views(tmp_path):
    from keras_conmim.models.views import PairedViews

    check_serializable(PairedViews((8, 8), seed=2), IMAGES_U8, [(2, 8, 8, 1), (2, 8, 8, 1)],
                       tmp_path, atol=1e-4)
    check_serializable(PairedViews(8, crop_scale=(0.3, 1.0), hue=0.05, symmetric=True, seed=4),
                       IMAGES_U8, [(2, 8, 8, 1), (2, 8, 8, 1)], tmp_path, atol=1e-4)


@case("ViT")
def _vit(tmp_path):
    import keras_conmim as kc

    from conftest import randomize_weights

    for overrides in ({}, dict(use_shared_relative_position_bias=False),
                      dict(position_embedding="absolute", drop_path_rate=0.1)):
        vit = tiny_vit(**overrides)
        randomize_weights(vit)
        check_serializable(vit, kc.normalize_images(IMAGES_U8), (2, 5, 16), tmp_path, atol=1e-5)


@case("ConMIM")
def _conmim(tmp_path):
    import keras

    import keras_conmim as kc

    model = kc.ConMIM(tiny_vit(), projector=kc.ProjectionHead(24, 8), seed=0, total_steps=4,
                      mask_generator="block")
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    model.fit(IMAGES_U8, batch_size=2, epochs=1, verbose=0)  # optimizer state and step counter too
    loaded = check_serializable(model, IMAGES_U8, {"loss": (), "lookup_accuracy": ()}, tmp_path,
                                atol=1e-5)  # the pretext loss: views, masks, both encoders
    assert int(to_numpy(loaded.step_counter)) == 1
    assert isinstance(loaded.mask_generator, kc.BlockMasking)
    # the next pretext loss was equal: the views' and masks' random streams were saved too


@case("ViTClassifier")
def _classifier(tmp_path):
    from keras_conmim.downstream.classifier import ViTClassifier

    check_serializable(ViTClassifier(tiny_vit(), 3, pooling="flatten"), IMAGES_F, (2, 3), tmp_path,
                       atol=1e-5)


@case("LayerDecayAdamW")
def _optimizer(tmp_path):
    import keras

    import keras_conmim as kc
    from keras_conmim.downstream.classifier import ViTClassifier

    model = ViTClassifier(tiny_vit(), 3)
    scales = kc.layer_decay_scales(model.encoder, 0.5)
    model.compile(optimizer=kc.LayerDecayAdamW(lr_scales=scales, learning_rate=1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(IMAGES_F, np.array([0, 1]), epochs=1, verbose=0)
    path = str(tmp_path / "with_optimizer.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.optimizer) is kc.LayerDecayAdamW
    assert loaded.optimizer.lr_scales == model.optimizer.lr_scales == scales
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=a.path)


@case("ServingEncoder")
def _serving(tmp_path):
    from keras_conmim.integrations.export import ServingEncoder

    check_serializable(ServingEncoder(tiny_vit()), IMAGES_F,
                       {"patch_tokens": (2, 4, 16), "pooled": (2, 16)}, tmp_path, atol=1e-5)


@case("ViTPyramidBackbone")
def _pyramid(tmp_path):
    pytest.importorskip("keras_hub")
    from keras_conmim.integrations.kerashub import ViTPyramidBackbone

    check_serializable(ViTPyramidBackbone(tiny_vit()), IMAGES_F, (2, 2, 2, 16), tmp_path,
                       atol=1e-5)


@case("InstanceSegmenter")
def _instance(tmp_path):
    pytest.importorskip("keras_hub")
    import keras_conmim as kc
    from keras_conmim.integrations.kerashub import ViTPyramidBackbone

    backbone = ViTPyramidBackbone(tiny_vit(), image_shape=(16, 16, 1), min_level=2, max_level=4)
    images = np.repeat(np.repeat(IMAGES_F, 2, 1), 2, 2)
    check_serializable(kc.InstanceSegmenter(backbone, 3, width=8, num_prototypes=4), images,
                       {"classes": (2, 5, 3), "boxes": (2, 5, 4), "coefficients": (2, 5, 4),
                        "prototypes": (2, 8, 8, 4)}, tmp_path, atol=1e-5)


@case("UperNetSegmenter")
def _upernet(tmp_path):
    pytest.importorskip("keras_hub")
    import keras_conmim as kc
    from keras_conmim.integrations.kerashub import ViTPyramidBackbone

    backbone = ViTPyramidBackbone(tiny_vit(), image_shape=(16, 16, 1), min_level=2, max_level=4)
    images = np.repeat(np.repeat(IMAGES_F, 2, 1), 2, 2)
    check_serializable(kc.UperNetSegmenter(backbone, 3, width=8), images, (2, 16, 16, 3),
                       tmp_path, atol=1e-5)


@case("ViTPyramidImageClassifier")
def _hub_classifier(tmp_path):
    pytest.importorskip("keras_hub")
    from keras_conmim.integrations.kerashub import ViTPyramidBackbone, ViTPyramidImageClassifier

    check_serializable(ViTPyramidImageClassifier(ViTPyramidBackbone(tiny_vit()), 3), IMAGES_F,
                       (2, 3), tmp_path, atol=1e-5)


@case("ViTCVBackbone")
def _cv(tmp_path):
    pytest.importorskip("keras_cv")
    from keras_conmim.integrations.kerascv import ViTCVBackbone

    import keras

    backbone = ViTCVBackbone(tiny_vit(), pyramid_channels=8)
    loaded = check_serializable(backbone, IMAGES_F, (2, 2, 2, 16), tmp_path, atol=1e-5)
    p3 = keras.Model(loaded.inputs, loaded.get_layer("P3").output)(IMAGES_F)  # the levels too
    ref = keras.Model(backbone.inputs, backbone.get_layer("P3").output)(IMAGES_F)
    np.testing.assert_allclose(to_numpy(p3), to_numpy(ref), atol=1e-5)


@case("KerasHubCVBackbone")
def _cv_hub(tmp_path):
    pytest.importorskip("keras_cv")
    pytest.importorskip("keras_hub")
    import keras

    from conftest import tiny_resnet
    from keras_conmim.integrations.kerascv import KerasHubCVBackbone

    backbone = KerasHubCVBackbone(tiny_resnet(32))
    images = RNG.uniform(0, 1, (2, 32, 32, 1)).astype("float32")
    loaded = check_serializable(backbone, images, (2, 1, 1, 8), tmp_path, atol=1e-5)
    assert loaded.pyramid_level_inputs == backbone.pyramid_level_inputs
    for level, name in loaded.pyramid_level_inputs.items():  # each level at its stride
        n = int(level[1:])
        got = keras.Model(loaded.inputs, loaded.get_layer(name).output)(images)
        assert tuple(got.shape[1:3]) == (32 // 2**n,) * 2, (level, got.shape)


@case("NonMaxSuppression")
def _cv_decoder(tmp_path):
    pytest.importorskip("keras_cv")
    import keras

    from keras_conmim.integrations.kerascv import NonMaxSuppression

    decoder = NonMaxSuppression(bounding_box_format="yxyx", from_logits=True, iou_threshold=0.4,
                                confidence_threshold=0.2, max_detections=5)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(decoder))
    assert type(again) is NonMaxSuppression and again.get_config() == decoder.get_config()
    rng = np.random.RandomState(0)
    boxes = np.sort(rng.uniform(0, 32, (2, 12, 2, 2)), axis=2).transpose(0, 1, 3, 2)
    boxes = boxes.reshape(2, 12, 4).astype("float32")
    scores = rng.normal(size=(2, 12, 3)).astype("float32")
    for key, value in decoder(boxes, scores).items():
        np.testing.assert_array_equal(to_numpy(value), to_numpy(again(boxes, scores)[key]))


def test_every_registered_class_has_a_check():
    missing = sorted(set(registered_classes()) - set(CASES))
    assert not missing, f"registered classes without a serialization check: {missing}"
    assert len(CASES) >= 18


def test_every_adapter_class_loads_after_a_bare_import():
    """Each class the optional adapters register has a stand-in from `import
    keras_conmim` on (integrations.adapters.DEFERRED), so their files load."""
    import inspect

    from keras_conmim.integrations.adapters import DEFERRED

    for module in ("kerashub", "kerascv"):
        adapter = pytest.importorskip(f"keras_conmim.integrations.{module}")
        for name, obj in vars(adapter).items():
            if inspect.isclass(obj) and obj.__module__ == adapter.__name__:
                assert DEFERRED.get(name) == adapter.__name__, (module, name)


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip(name, tmp_path):
    CASES[name](tmp_path)
