import numpy as np
import pytest

import keras_conmim as kc
from conftest import to_numpy, uint8_images

OFF = dict(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)
IDENTITY = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))


@pytest.mark.parametrize("channels", [1, 3])
def test_photometric_off_views_identical(channels):
    views = kc.PairedViews(16, seed=0, **OFF)
    student, teacher = views(uint8_images(8, 20, channels))
    assert student.shape == (8, 16, 16, channels)
    np.testing.assert_array_equal(to_numpy(student), to_numpy(teacher))


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_identity_geometry_is_exact(interpolation):
    images = uint8_images(4, 16, 3)
    views = kc.PairedViews(16, flip_prob=0.0, interpolation=interpolation,
                           mean=(0, 0, 0), std=(1, 1, 1), **IDENTITY, **OFF)
    student, _ = views(images)
    np.testing.assert_allclose(to_numpy(student), images / 255.0, atol=1e-6)
    flipped, _ = kc.PairedViews(16, flip_prob=1.0, mean=(0,), std=(1,), **IDENTITY, **OFF)(images[..., :1])
    np.testing.assert_allclose(to_numpy(flipped), images[:, :, ::-1, :1] / 255.0, atol=1e-6)


def test_crop_changes_geometry_and_both_views_share_it():
    images = uint8_images(16, 16, 1)
    # Strong view = solarize always, so teacher = solarize(student) exactly.
    views = kc.PairedViews(16, crop_scale=(0.2, 0.5), seed=1, mean=(0,), std=(1,),
                           jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=1.0)
    student, teacher = (to_numpy(v) for v in views(images))
    assert not np.allclose(student, images / 255.0, atol=0.05)
    np.testing.assert_allclose(teacher, np.where(student >= 0.5, 1 - student, student), atol=1e-6)


def test_strong_view_is_perturbed_and_in_range():
    images = uint8_images(32, 16, 3)
    views = kc.PairedViews(16, seed=2, mean=(0, 0, 0), std=(1, 1, 1), jitter_prob=1.0)
    student, teacher = (to_numpy(v) for v in views(images))
    assert np.abs(student - teacher).mean() > 0.02
    assert teacher.min() >= -1e-5 and teacher.max() <= 1 + 1e-5
    assert student.min() >= 0 and student.max() <= 1


def test_symmetric_perturbs_both_views():
    images = uint8_images(8, 16, 3)
    views = kc.PairedViews(16, seed=3, symmetric=True, **IDENTITY)
    student, _ = views(images)
    plain = kc.PairedViews(16, seed=3, flip_prob=0.0, **IDENTITY, **OFF)(images)[0]
    assert np.abs(to_numpy(student) - to_numpy(plain)).max() > 0.05


def test_resizes_to_image_size():
    student, teacher = kc.PairedViews((32, 24), seed=0)(uint8_images(2, 28, 1))
    assert student.shape == teacher.shape == (2, 32, 24, 1)


def test_default_normalisation():
    images = np.full((2, 8, 8, 3), 255, "uint8")
    student, _ = kc.PairedViews(8, **IDENTITY, **OFF)(images)
    expected = (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(to_numpy(student)[0, 0, 0], expected, rtol=1e-5)


def test_seeded_views_are_reproducible():
    images = uint8_images(4, 16, 3)
    a = [to_numpy(v) for v in kc.PairedViews(16, seed=9)(images)]
    b = [to_numpy(v) for v in kc.PairedViews(16, seed=9)(images)]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("kwargs,match", [
    (dict(crop_scale=(0.0, 1.0)), "crop_scale"),
    (dict(interpolation="nearest"), "bilinear, bicubic"),
    (dict(blur_prob=1.5), "blur_prob"),
    (dict(hue=0.7), "hue"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kc.PairedViews(16, **kwargs)
