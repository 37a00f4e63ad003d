"""Fine-tuning geometry: the release's train-time crop and flip, and its
test-time center crop, on uint8 batches.

The release fine-tunes with timm's ImageNet transforms (its `datasets.py`,
`build_transform`):

- **train**, images above 32 px: a random resized crop (area 8-100% of the
  image, aspect ratio 3/4-4/3, bicubic) and a horizontal flip (p = 0.5);
  images of 32 px or less: the crop is replaced by a random crop of the image
  zero-padded by 4 pixels on each side (CIFAR style), the flip stays;
- **test**, above 32 px: resize the shorter side to `size / 0.875` and take
  the center `size` crop; 32 px or less: the image as it is.

`crop="auto"` (every preset's recipe) follows that rule; "pad", "resized"
and "none" force one. Everything here works on whole batches with numpy
(no per-image Python loop) and draws its randomness from a numpy Generator
the caller seeds per step, so a resumed run crops as the stopped run would
have. The resampling matrices are the pre-training views' (`views.py`
calls `resampling_matrix` with `xp=keras.ops`).

Pure numpy: no keras import.
"""

import math

import numpy as np

CROPS = ("auto", "pad", "resized", "none")
SMALL_IMAGE = 32  # the release's `resize_im = input_size > 32`
EVAL_CROP_FRACTION = 0.875  # timm's crop_pct for inputs under 384 px (224 / 256)
INTERPOLATIONS = ("bilinear", "bicubic")


def _kernel(t, interpolation, xp):
    t = xp.abs(t)
    if interpolation == "bilinear":
        return xp.maximum(1.0 - t, 0.0)
    a = -0.5  # Keys' cubic, as PIL's bicubic.
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return xp.where(t <= 1, near, xp.where(t < 2, far, 0.0))


def resampling_matrix(start, length, in_size, out_size, interpolation="bicubic", xp=np):
    """`[B, out_size, in_size]` weights that sample the window
    `[start, start + length)` (pixels, per image) at `out_size` points.

    Rows are renormalised to sum to one, which clamps taps that fall outside
    the image to the edge pixels it has. An identity window gives exactly the
    identity matrix. `xp`: `numpy` or `keras.ops`.
    """
    centers = (xp.arange(out_size, dtype="float32") + 0.5) / out_size
    src = start[:, None] + centers[None] * length[:, None] - 0.5  # [B, out]
    pixels = xp.arange(in_size, dtype="float32")
    weights = _kernel(src[:, :, None] - pixels[None, None], interpolation, xp)
    return weights / xp.maximum(xp.sum(weights, axis=-1, keepdims=True), 1e-8)


def resolve_crop(crop, image_size):
    """"pad" or "resized" for `crop="auto"` by the release's rule (pad at 32 px
    or less), else `crop` itself; an unknown name is a ValueError."""
    if crop not in CROPS:
        raise ValueError(f"crop {crop!r}: choose one of {', '.join(CROPS)}.")
    if crop != "auto":
        return crop
    return "pad" if max(image_size) <= SMALL_IMAGE else "resized"


def check_geometry(crop="auto", padding=4, scale_min=0.08, flip=0.5):
    """ValueError naming the first impossible value (before training starts)."""
    if crop not in CROPS:
        raise ValueError(f"crop {crop!r}: choose one of {', '.join(CROPS)}.")
    if int(padding) != padding or padding < 0:
        raise ValueError(f"crop padding {padding}: a whole number of pixels >= 0, e.g. 4.")
    if not 0 < scale_min <= 1:
        raise ValueError(f"crop scale min {scale_min}: the smallest crop area, in (0, 1], "
                         "e.g. 0.08.")
    if not 0 <= flip <= 1:
        raise ValueError(f"flip {flip}: a probability, in [0, 1].")


def train_geometry(images, rng, crop="auto", padding=4, scale_min=0.08, flip=0.5,
                   ratio=(3 / 4, 4 / 3), interpolation="bicubic"):
    """The release's train-time crop and flip of a uint8 batch `[B, H, W, C]`,
    one draw per image from `rng` (a `numpy.random.Generator`); same shape
    and dtype out.

    "pad": a random `H x W` window of the image zero-padded by `padding`
    pixels (offsets uniform in `[-padding, padding]`, as torchvision's
    `RandomCrop(size, padding)`); "resized": a random resized crop (area
    `scale_min`-1, aspect ratio in `ratio`, log-uniform, clipped to the
    image instead of torchvision's rejection loop, as the pre-training
    views); then a horizontal flip with probability `flip`.
    """
    check_geometry(crop, padding, scale_min, flip)
    images = np.asarray(images)
    b, h, w = images.shape[:3]
    crop = resolve_crop(crop, (h, w))
    flipped = rng.random(b) < flip
    if crop == "resized":
        u = rng.random((b, 4))
        area = scale_min + u[:, 0] * (1.0 - scale_min)
        r = np.exp(math.log(ratio[0]) + u[:, 1] * (math.log(ratio[1]) - math.log(ratio[0])))
        cw, ch = np.minimum(np.sqrt(area * r), 1.0), np.minimum(np.sqrt(area / r), 1.0)
        x0, y0 = u[:, 2] * (1.0 - cw), u[:, 3] * (1.0 - ch)
        rows = resampling_matrix((y0 * h).astype("float32"), (ch * h).astype("float32"), h, h,
                                 interpolation)
        cols = resampling_matrix((x0 * w).astype("float32"), (cw * w).astype("float32"), w, w,
                                 interpolation)
        cols = np.where(flipped[:, None, None], cols[:, ::-1], cols)
        x = np.einsum("bih,bhwc->biwc", rows, images.astype("float32"))
        x = np.einsum("bjw,biwc->bijc", cols, x)
        return np.clip(np.rint(x), 0, 255).astype(images.dtype)
    if crop == "none" or padding == 0:
        dy = dx = np.zeros(b, "int64")
    else:
        dy, dx = rng.integers(-padding, padding + 1, size=(2, b))
    # Output pixel (y, x) reads input (y + dy, x + dx), zero outside: the
    # zero-padded random crop, as one gather.
    ys = np.arange(h)[None, :] + dy[:, None]  # [B, H]
    xs = np.arange(w)[None, :] + dx[:, None]  # [B, W]
    xs = np.where(flipped[:, None], xs[:, ::-1], xs)
    inside = (((ys >= 0) & (ys < h))[:, :, None] & ((xs >= 0) & (xs < w))[:, None, :])
    out = images[np.arange(b)[:, None, None], np.clip(ys, 0, h - 1)[:, :, None],
                 np.clip(xs, 0, w - 1)[:, None, :]]
    return np.where(inside[..., None], out, 0).astype(images.dtype)


def eval_load_size(image_size, crop="auto"):
    """The size to load test images at before `eval_center_crop`: the
    release's `size / 0.875` (shorter side) for images above 32 px with
    "auto" or "resized"; the size itself otherwise."""
    h, w = image_size
    if resolve_crop(crop, (h, w)) != "resized":
        return (h, w)
    return (int(h / EVAL_CROP_FRACTION), int(w / EVAL_CROP_FRACTION))


def eval_center_crop(images, image_size):
    """The center `image_size` window of a uint8 batch loaded at
    `eval_load_size` (a no-op when the sizes are equal)."""
    h, w = image_size
    top = (images.shape[1] - h) // 2
    left = (images.shape[2] - w) // 2
    if top < 0 or left < 0:
        raise ValueError(f"Images of {images.shape[1:3]} are smaller than the crop {image_size}.")
    return images[:, top:top + h, left:left + w]
