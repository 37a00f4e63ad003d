"""Per-image preparation in numpy/PIL: decode, channel policy, resize policy.

Every source hands the train step uint8 `[H, W, C]` images of one fixed size;
this module is where an image of any size and mode becomes one.
"""

import numpy as np

RESIZE_POLICIES = ("crop", "pad", "center")
CHANNEL_POLICIES = ("keep", "rgb", "gray")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover
        raise ImportError(
            "Reading image files needs Pillow: pip install pillow") from e
    return Image


def check_policies(image_size, resize, channels):
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be an int or (height, width) > 0, received {image_size}.")
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"Unknown resize policy {resize!r}. Valid: {', '.join(RESIZE_POLICIES)}.")
    if channels not in CHANNEL_POLICIES:
        raise ValueError(
            f"Unknown channel policy {channels!r}. Valid: {', '.join(CHANNEL_POLICIES)}.")
    return size


def convert_channels(image, channels):
    """`"keep"`, `"rgb"` (gray -> 3 channels) or `"gray"` (RGB -> 1, BT.601)."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 4:  # drop alpha
        image = image[..., :3]
    if channels == "rgb" and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    elif channels == "gray" and image.shape[-1] == 3:
        luma = image.astype("float32") @ np.array([0.299, 0.587, 0.114], "float32")
        image = np.clip(np.round(luma), 0, 255).astype("uint8")[..., None]
    return image


def channel_conversion(native, channels):
    """What `convert_channels(native, channels)` does to a decoded image, in
    words for a run's description ("" when nothing changes)."""
    have = 1 if native.ndim == 2 or native.shape[-1] == 1 else 3
    if channels == "rgb" and have == 1:
        return "gray images repeated to RGB (the encoder takes 3 channels)"
    if channels == "gray" and have == 3:
        return "RGB images converted to gray, BT.601 luma (the encoder takes 1 channel)"
    return ""


def resize_image(image, size, policy="crop"):
    """uint8 `[h, w, c]` -> `[*size, c]`.

    `"crop"`: scale the shorter side to fit, then center crop (the usual
    evaluation resize). `"pad"`: scale the longer side to fit, then pad with
    zeros around the center (nothing is cut off). `"center"`: no scaling:
    zero-pad around the center where the image is smaller, center-crop where
    it is larger (Fashion-MNIST's 28 px padded to 32, as in the calibration's
    calibration).
    """
    h, w = image.shape[:2]
    th, tw = size
    if (h, w) == (th, tw):
        return image
    if policy == "center":
        return _center(image, th, tw)
    Image = _pil()
    scale = max(th / h, tw / w) if policy == "crop" else min(th / h, tw / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    channels = image.shape[-1]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    resized = np.asarray(pil.resize((nw, nh), Image.BICUBIC))
    if resized.ndim == 2:
        resized = resized[..., None]
    if policy == "crop":
        top, left = (nh - th) // 2, (nw - tw) // 2
        return resized[top: top + th, left: left + tw]
    out = np.zeros((th, tw, channels), "uint8")
    top, left = (th - nh) // 2, (tw - nw) // 2
    out[top: top + nh, left: left + nw] = resized
    return out


def _center(image, th, tw):
    h, w, channels = image.shape
    out = np.zeros((th, tw, channels), "uint8")
    src_y, src_x = max(0, (h - th) // 2), max(0, (w - tw) // 2)
    dst_y, dst_x = max(0, (th - h) // 2), max(0, (tw - w) // 2)
    ch, cw = min(h, th), min(w, tw)
    out[dst_y: dst_y + ch, dst_x: dst_x + cw] = image[src_y: src_y + ch, src_x: src_x + cw]
    return out


def prepare(image, size, resize="crop", channels="keep"):
    """Channel policy, then resize policy; returns uint8 `[*size, C]`."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(
            f"Images must be uint8 in [0, 255], received dtype {image.dtype}. "
            "Convert with np.clip(x, 0, 255).astype('uint8') (or x * 255 for [0, 1] floats).")
    return resize_image(convert_channels(image, channels), size, resize)


def decode_file(path):
    """Decode one image file to uint8 `[h, w, c]` (c = 1 or 3). The first
    frame of an animation; 16-bit gray scaled to 8 bits by keeping the high
    byte (`v >> 8`), as tf.io does."""
    Image = _pil()
    with Image.open(path) as img:
        img.load()
        if img.mode.startswith("I;16") or img.mode == "I":
            # PIL's convert("L") clips 16-bit values at 255 (a nearly white image).
            wide = np.asarray(img).astype("int64")
            if wide.min(initial=0) < 0 or wide.max(initial=0) > 65535:
                raise ValueError(f"{path}: 32-bit integer pixels; expected at most 16 bits.")
            return (wide >> 8).astype("uint8")
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGB" if img.mode in ("RGBA", "P", "CMYK", "LA", "PA", "RGBX")
                              else "L")
        return np.asarray(img)
