"""Paired views on the device: one shared geometry, two photometric strengths.

ConMIM's positive for masked patch j is the teacher's patch j, so both views
must share the crop and flip exactly. Resampling is written as per-image
interpolation matrices (`out = Ry @ image @ Rx^T`): matmuls that compile into
the step on every backend and give the same numbers on all three.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_conmim.data.geometry import INTERPOLATIONS, resampling_matrix as _resampling_matrix
from keras_conmim.models.distribute import global_batch_uniform

from keras_conmim.models.layers import PACKAGE, SeedStateMixin

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LUMA = (0.299, 0.587, 0.114)


def resampling_matrix(start, length, in_size, out_size, interpolation="bicubic"):
    """`keras_conmim.data.geometry.resampling_matrix` in `keras.ops`: `[B,
    out_size, in_size]` weights that sample the window `[start, start +
    length)` (pixels, per image) at `out_size` points."""
    return _resampling_matrix(start, length, in_size, out_size, interpolation, xp=ops)


def gaussian_matrix(sigma, size):
    """`[B, size, size]` row-normalised Gaussian blur along one axis."""
    pos = ops.arange(size, dtype="float32")
    d = pos[None, :, None] - pos[None, None, :]
    w = ops.exp(-(d * d) / (2.0 * sigma[:, None, None] ** 2))
    return w / ops.sum(w, axis=-1, keepdims=True)


def apply_separable(images, rows, cols):
    """`rows [B, Ho, H]`, `cols [B, Wo, W]`, images `[B, H, W, C]`."""
    x = ops.einsum("bih,bhwc->biwc", rows, images)
    return ops.einsum("bjw,biwc->bijc", cols, x)


def normalize_images(images, mean=None, std=None, scale=1 / 255.0):
    """`(images * scale - mean) / std`: uint8 [0, 255] (or, with `scale=1`,
    floats in [0, 1]) to what the encoders see. None uses ImageNet's mean/std
    for RGB and their channel average for grayscale, as `PairedViews` does.
    Use it to feed an encoder outside pre-training."""
    x = ops.cast(images, "float32") * scale
    channels = x.shape[-1]
    if mean is None:
        mean = IMAGENET_MEAN if channels == 3 else (float(np.mean(IMAGENET_MEAN)),)
    if std is None:
        std = IMAGENET_STD if channels == 3 else (float(np.mean(IMAGENET_STD)),)
    mean = ops.convert_to_tensor(np.array(mean, "float32"))
    std = ops.convert_to_tensor(np.array(std, "float32"))
    return (x - mean) / std


def grayscale(images):
    if images.shape[-1] == 1:
        return images
    luma = ops.convert_to_tensor(np.array(_LUMA, "float32"))
    return ops.sum(images * luma, axis=-1, keepdims=True)


@keras.saving.register_keras_serializable(package=PACKAGE)
class PairedViews(SeedStateMixin, keras.layers.Layer):
    """Student and teacher views of a uint8 batch, made on the device.

    One random resized crop and one horizontal flip per image are shared by
    both views. The student view gets normalisation only; the teacher view
    gets colour jitter, grayscale, Gaussian blur and solarisation first (the
    strong view of docs/method.md). With `symmetric=True` both views get independent
    strong perturbations (an ablation).

    Input: `[B, H, W, C]` images, uint8 in [0, 255] (any H, W; C = 1 or 3).
    Output: `(student_view, teacher_view)`, float32 `[B, *image_size, C]`.

    Args:
        image_size: int or tuple of 2 ints. Output size.
        crop_scale: tuple. Range of the crop's area fraction. Defaults to
            `(0.08, 1.0)`.
        crop_ratio: tuple. Range of the crop's aspect ratio. Defaults to
            `(3/4, 4/3)`.
        flip_prob: float. Horizontal flip probability. Defaults to `0.5`.
        interpolation: str. `"bicubic"` (the release) or `"bilinear"`.
        jitter_prob: float. Colour jitter probability. Defaults to `0.8`.
        brightness, contrast, saturation, hue: floats. Jitter strengths as in
            torchvision's ColorJitter. Defaults to `0.4, 0.4, 0.2, 0.1`.
        grayscale_prob: float. Defaults to `0.2`.
        blur_prob: float. Defaults to `0.1`.
        blur_sigma: tuple. Gaussian sigma range in pixels. Defaults to
            `(0.1, 2.0)`.
        solarize_prob: float. Solarisation (threshold at half range).
            Defaults to `0.2`.
        symmetric: bool. Perturb both views strongly. Defaults to `False`.
        mean, std: tuples or None. Normalisation in [0, 1] units. None uses
            ImageNet's for RGB and their channel average for grayscale.
        seed: int or None.
    """

    def __init__(
        self,
        image_size,
        crop_scale=(0.08, 1.0),
        crop_ratio=(3 / 4, 4 / 3),
        flip_prob=0.5,
        interpolation="bicubic",
        jitter_prob=0.8,
        brightness=0.4,
        contrast=0.4,
        saturation=0.2,
        hue=0.1,
        grayscale_prob=0.2,
        blur_prob=0.1,
        blur_sigma=(0.1, 2.0),
        solarize_prob=0.2,
        symmetric=False,
        mean=None,
        std=None,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        size = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.image_size = tuple(int(s) for s in size)
        self.crop_scale = tuple(crop_scale)
        self.crop_ratio = tuple(crop_ratio)
        self.flip_prob = flip_prob
        self.interpolation = interpolation
        self.jitter_prob = jitter_prob
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue
        self.grayscale_prob = grayscale_prob
        self.blur_prob = blur_prob
        self.blur_sigma = tuple(blur_sigma)
        self.solarize_prob = solarize_prob
        self.symmetric = symmetric
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        self.seed = seed
        self._validate()
        self.seed_generator = keras.random.SeedGenerator(seed, name="views_seed")
        self.built = True

    def _validate(self):
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, received {self.crop_scale}.")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < lo <= hi, received {self.crop_ratio}.")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"Unknown interpolation {self.interpolation!r}. Valid: {', '.join(INTERPOLATIONS)}."
            )
        for name in ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], received {getattr(self, name)}.")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], received {self.hue}.")
        if min(self.brightness, self.contrast, self.saturation) < 0:
            raise ValueError("brightness, contrast and saturation must be >= 0.")

    @property
    def photometric(self):
        """False when every strong perturbation is switched off."""
        return any(p > 0 for p in (self.jitter_prob, self.grayscale_prob,
                                   self.blur_prob, self.solarize_prob))

    def crop_and_flip(self, images, seed):
        """Random resized crop + flip of float images in [0, 1]."""
        b = ops.shape(images)[0]
        in_h, in_w = images.shape[1], images.shape[2]
        u = global_batch_uniform((b, 5), seed=seed)
        area = self.crop_scale[0] + u[:, 0] * (self.crop_scale[1] - self.crop_scale[0])
        log_r = math.log(self.crop_ratio[0]) + u[:, 1] * (
            math.log(self.crop_ratio[1]) - math.log(self.crop_ratio[0]))
        ratio = ops.exp(log_r)
        # Fractions of the side; clipping to 1 replaces torchvision's
        # rejection loop (it falls back to a center crop after 10 tries).
        cw = ops.minimum(ops.sqrt(area * ratio), 1.0)
        ch = ops.minimum(ops.sqrt(area / ratio), 1.0)
        x0 = u[:, 2] * (1.0 - cw)
        y0 = u[:, 3] * (1.0 - ch)
        out_h, out_w = self.image_size
        rows = resampling_matrix(y0 * in_h, ch * in_h, in_h, out_h, self.interpolation)
        cols = resampling_matrix(x0 * in_w, cw * in_w, in_w, out_w, self.interpolation)
        flip = ops.reshape(u[:, 4] < self.flip_prob, (-1, 1, 1))
        cols = ops.where(flip, ops.flip(cols, axis=1), cols)
        # Clip bicubic overshoot, as resampling a uint8 image does.
        return ops.clip(apply_separable(images, rows, cols), 0.0, 1.0)

    def strong(self, x, seed):
        """The teacher's perturbations on float images in [0, 1]."""
        b = ops.shape(x)[0]
        rgb = x.shape[-1] == 3
        u = global_batch_uniform((b, 10), seed=seed)
        col = lambda i: ops.reshape(u[:, i], (-1, 1, 1, 1))  # noqa: E731
        jitter = col(0) < self.jitter_prob

        def factor(i, strength):
            f = 1.0 + strength * (2.0 * col(i) - 1.0)
            return ops.where(jitter, ops.maximum(f, 0.0), 1.0)

        # Fixed order brightness, contrast, saturation, hue (torchvision
        # shuffles the order per image; the strengths are the same).
        x = ops.clip(x * factor(1, self.brightness), 0.0, 1.0)
        mean = ops.mean(grayscale(x), axis=(1, 2, 3), keepdims=True)
        x = ops.clip((x - mean) * factor(2, self.contrast) + mean, 0.0, 1.0)
        if rgb:
            gray = grayscale(x)
            x = ops.clip((x - gray) * factor(3, self.saturation) + gray, 0.0, 1.0)
            theta = ops.where(jitter, self.hue * (2.0 * col(4) - 1.0), 0.0) * (2 * math.pi)
            x = ops.clip(_rotate_hue(x, theta), 0.0, 1.0)
            x = ops.where(col(5) < self.grayscale_prob, ops.broadcast_to(grayscale(x), ops.shape(x)), x)
        sigma = self.blur_sigma[0] + u[:, 6] * (self.blur_sigma[1] - self.blur_sigma[0])
        blurred = apply_separable(
            x, gaussian_matrix(sigma, x.shape[1]), gaussian_matrix(sigma, x.shape[2]))
        x = ops.where(col(7) < self.blur_prob, blurred, x)
        x = ops.where((col(8) < self.solarize_prob) & (x >= 0.5), 1.0 - x, x)
        return x

    def call(self, images):
        seed = self.seed_generator
        x = ops.cast(images, "float32") / 255.0
        x = self.crop_and_flip(x, seed)
        teacher = self.strong(x, seed) if self.photometric else x
        student = self.strong(x, seed) if self.symmetric and self.photometric else x
        return (normalize_images(student, self.mean, self.std, scale=1.0),
                normalize_images(teacher, self.mean, self.std, scale=1.0))

    def get_config(self):
        config = super().get_config()
        config.update(
            image_size=self.image_size, crop_scale=self.crop_scale,
            crop_ratio=self.crop_ratio, flip_prob=self.flip_prob,
            interpolation=self.interpolation, jitter_prob=self.jitter_prob,
            brightness=self.brightness, contrast=self.contrast,
            saturation=self.saturation, hue=self.hue,
            grayscale_prob=self.grayscale_prob, blur_prob=self.blur_prob,
            blur_sigma=self.blur_sigma, solarize_prob=self.solarize_prob,
            symmetric=self.symmetric, mean=self.mean, std=self.std, seed=self.seed,
        )
        return config


def _rotate_hue(x, theta):
    """Hue rotation by `theta` radians per image, in YIQ space.

    A rotation of the chroma plane: the linear-algebra cousin of shifting H
    in HSV, cheap and differentiable.
    """
    to_yiq = np.array([[0.299, 0.587, 0.114],
                       [0.596, -0.274, -0.322],
                       [0.211, -0.523, 0.312]], "float32")
    from_yiq = np.linalg.inv(to_yiq).astype("float32")
    yiq = ops.einsum("bhwc,dc->bhwd", x, ops.convert_to_tensor(to_yiq))
    c, s = ops.cos(theta), ops.sin(theta)
    i = yiq[..., 1:2] * c - yiq[..., 2:3] * s
    q = yiq[..., 1:2] * s + yiq[..., 2:3] * c
    yiq = ops.concatenate([yiq[..., 0:1], i, q], axis=-1)
    return ops.einsum("bhwd,cd->bhwc", yiq, ops.convert_to_tensor(from_yiq))
