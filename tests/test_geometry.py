"""The release's fine-tuning geometry (`keras_conmim.data.geometry`): random
crop of the zero-padded image or random resized crop, flip, and the test-time
center crop."""

import numpy as np
import pytest

from keras_conmim.data import geometry
from conftest import to_numpy, uint8_images


def _shifted(image, dy, dx, flip):
    """`image` read at (y + dy, x + dx), zero outside, then mirrored."""
    h, w = image.shape[:2]
    padded = np.zeros((h + 2 * 8, w + 2 * 8, image.shape[2]), image.dtype)
    padded[8:8 + h, 8:8 + w] = image
    out = padded[8 + dy:8 + dy + h, 8 + dx:8 + dx + w]
    return out[:, ::-1] if flip else out


def test_pad_crop_is_a_shifted_zero_padded_window_then_a_flip():
    images = uint8_images(200, size=12, seed=1) | 1  # no zero pixel: padding is visible
    out = geometry.train_geometry(images, np.random.default_rng(0), crop="pad", padding=3,
                                  flip=0.5)
    assert out.shape == images.shape and out.dtype == np.uint8
    found = []
    for image, result in zip(images, out):
        matches = [(dy, dx, f) for dy in range(-3, 4) for dx in range(-3, 4) for f in (0, 1)
                   if np.array_equal(_shifted(image, dy, dx, f), result)]
        assert len(matches) == 1, matches
        found.append(matches[0])
    dys, dxs, flips = np.array(found).T
    assert set(dys) == set(dxs) == set(range(-3, 4))  # every offset of [-p, p] drawn
    assert 0.35 < flips.mean() < 0.65


def test_geometry_off_and_determinism():
    images = uint8_images(8, size=10, seed=2)
    rng = np.random.default_rng
    for crop in ("none", "pad"):
        same = geometry.train_geometry(images, rng(0), crop=crop, padding=0, flip=0.0)
        np.testing.assert_array_equal(same, images)
    mirrored = geometry.train_geometry(images, rng(0), crop="none", flip=1.0)
    np.testing.assert_array_equal(mirrored, images[:, :, ::-1])
    a = geometry.train_geometry(images, rng(5), crop="auto")
    b = geometry.train_geometry(images, rng(5), crop="auto")
    np.testing.assert_array_equal(a, b)  # the draw is the generator's alone


def test_resized_crop_whole_image_is_the_identity_and_scales_like_the_views():
    images = uint8_images(4, size=40, channels=3, seed=3)
    whole = geometry.train_geometry(images, np.random.default_rng(0), crop="resized",
                                    scale_min=1.0, ratio=(1.0, 1.0), flip=0.0)
    np.testing.assert_array_equal(whole, images)
    flipped = geometry.train_geometry(images, np.random.default_rng(0), crop="resized",
                                      scale_min=1.0, ratio=(1.0, 1.0), flip=1.0)
    np.testing.assert_array_equal(flipped, images[:, :, ::-1])
    flat = np.full((6, 40, 40, 1), 77, "uint8")  # any crop of a flat image is flat
    np.testing.assert_array_equal(
        geometry.train_geometry(flat, np.random.default_rng(1), crop="resized"), flat)
    crops = geometry.train_geometry(images, np.random.default_rng(1), crop="resized")
    assert crops.shape == images.shape and not np.array_equal(crops, images)


def test_views_and_fine_tuning_share_one_resampling_matrix():
    from keras import ops

    from keras_conmim.models import views

    start = np.array([0.0, 3.5, 10.25], "float32")
    length = np.array([20.0, 7.0, 12.5], "float32")
    for interpolation in geometry.INTERPOLATIONS:
        ours = geometry.resampling_matrix(start, length, 24, 16, interpolation)
        keras_ops = views.resampling_matrix(ops.convert_to_tensor(start),
                                            ops.convert_to_tensor(length), 24, 16, interpolation)
        np.testing.assert_allclose(to_numpy(keras_ops), ours, atol=1e-6)
        np.testing.assert_allclose(ours.sum(-1), 1.0, atol=1e-5)


def test_auto_follows_the_release_size_rule_and_the_test_center_crop():
    assert geometry.resolve_crop("auto", (28, 28)) == "pad"
    assert geometry.resolve_crop("auto", (32, 32)) == "pad"  # the release: input_size > 32
    assert geometry.resolve_crop("auto", (33, 33)) == "resized"
    assert geometry.resolve_crop("none", (224, 224)) == "none"
    assert geometry.eval_load_size((224, 224)) == (256, 256)  # 224 / 0.875
    assert geometry.eval_load_size((28, 28)) == (28, 28)
    assert geometry.eval_load_size((224, 224), "pad") == (224, 224)
    images = uint8_images(2, size=256, seed=4)
    np.testing.assert_array_equal(geometry.eval_center_crop(images, (224, 224)),
                                  images[:, 16:240, 16:240])
    with pytest.raises(ValueError, match="smaller than the crop"):
        geometry.eval_center_crop(images[:, :100, :100], (224, 224))


@pytest.mark.parametrize("kwargs, message", [
    (dict(crop="mirror"), "crop 'mirror': choose one of auto, pad, resized, none"),
    (dict(padding=-1), "crop padding -1: a whole number"),
    (dict(padding=2.5), "crop padding 2.5: a whole number"),
    (dict(scale_min=0.0), r"crop scale min 0.0: the smallest crop area, in \(0, 1\]"),
    (dict(flip=1.5), r"flip 1.5: a probability, in \[0, 1\]"),
])
def test_impossible_geometry_is_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        geometry.check_geometry(**kwargs)
