"""Image files decoded and resized inside `tf.data` (TensorFlow installed):
`tf.io` reads and decodes each file, in parallel, and the resize policy runs
as graph ops, so a folder of JPEGs keeps the accelerator fed without Python
per image. Used by `ImageSource.dataset` for folders whose files `tf.io` can
decode (JPEG, PNG, BMP, GIF, WebP); PIL (`images.py`) remains the path
without TensorFlow and for other formats.

A file that tf.io cannot read or decode (deleted since it was listed, in a
format its name hides, such as a TIFF named `.png`, corrupt) or that looks
truncated (no JPEG end marker, no PNG IEND chunk) is read by the PIL path
instead, which decodes what PIL can and otherwise skips, counts and names the
file (`source.failed_at_decode`, `source.failed_files`) and fills the batch
with the next good image, as without TensorFlow: one bad file never stops the
pipeline. The two paths agree on the policies (channel conversion BT.601, shorter/
longer side scaled, centered crop/pad) but not bit for bit: TensorFlow's
bilinear antialiased resampler is not PIL's bicubic. A run keeps one path from start to resume, so
resume stays exact.
"""

import tensorflow as tf

TF_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
_LUMA = tf.constant([0.299, 0.587, 0.114], tf.float32)


def can_decode(paths):
    return all(str(p).lower().endswith(TF_EXTENSIONS) for p in paths)


def decode(raw, channels):
    """uint8 `[h, w, channels]` from a file's bytes."""
    wanted = 1 if channels == 1 else 3

    def jpeg():
        return tf.io.decode_jpeg(raw, channels=wanted, dct_method="INTEGER_ACCURATE")

    def other():
        # RGB first, so gray images of an RGB file follow BT.601 as PIL's "L"
        image = tf.io.decode_image(raw, channels=3, expand_animations=False)
        if wanted == 1:
            luma = tf.tensordot(tf.cast(image, tf.float32), _LUMA, axes=1)[..., None]
            return tf.cast(tf.clip_by_value(tf.round(luma), 0, 255), tf.uint8)
        return image

    image = tf.cond(tf.io.is_jpeg(raw), jpeg, other)
    image.set_shape([None, None, wanted])
    return image


def looks_complete(raw):
    """False for a JPEG without its end marker or a PNG without its IEND
    chunk (a truncated file: a cut download, a dying disk), which tf.io would
    fail on and stop the whole input pipeline."""
    n = tf.strings.length(raw)
    is_png = tf.strings.substr(raw, 0, 4) == b"\x89PNG"
    jpeg_ok = tf.strings.substr(raw, tf.maximum(n - 2, 0), 2) == b"\xff\xd9"
    png_ok = tf.strings.substr(raw, tf.maximum(n - 8, 0), 4) == b"IEND"
    return tf.where(tf.io.is_jpeg(raw), jpeg_ok, tf.where(is_png, png_ok, n > 0))


def resize(image, size, policy):
    """The resize policies of `images.resize_image`, as graph ops."""
    th, tw = size
    if policy == "center":
        return tf.image.resize_with_crop_or_pad(image, th, tw)
    shape = tf.cast(tf.shape(image)[:2], tf.float64)
    scales = tf.constant([th, tw], tf.float64) / shape
    scale = tf.reduce_max(scales) if policy == "crop" else tf.reduce_min(scales)
    new = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), 1)
    # Bilinear with antialiasing: 1.4x faster than bicubic here, and the train
    # step resamples every image again (random resized crop) anyway.
    resized = tf.image.resize(image, new, method="bilinear", antialias=True)
    resized = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
    return tf.image.resize_with_crop_or_pad(resized, th, tw)


def file_dataset(paths, image_size, resize_policy, channels, batch_size, indices, start_step,
                 prefetch, fallback):
    """Endless uint8 batches: batch `step` holds the files `indices(step)`.
    A file tf.io fails on, or that looks truncated, goes to `fallback(index)`
    (Python: PIL, which skips, counts and names what it cannot read and
    returns the next good image), so the batch stays full and aligned."""
    h, w = image_size
    table = tf.constant([str(p) for p in paths])

    def step_indices(step):
        idx = tf.numpy_function(lambda s: indices(int(s)).astype("int64"), [step], tf.int64)
        return tf.reshape(idx, (batch_size,))

    def decode_with_tf(i):
        raw = tf.io.read_file(table[i])
        # A truncated file may decode without an error: make it one.
        tf.debugging.assert_equal(looks_complete(raw), True, message="looks truncated")
        return tf.ensure_shape(resize(decode(raw, channels), (h, w), resize_policy),
                               (h, w, channels))

    def decode_with_pil(i):
        image = tf.numpy_function(lambda j: fallback(int(j)), [i], tf.uint8)
        return tf.ensure_shape(image, (h, w, channels))

    def load(i):
        # Any error of tf.io on this file (read, format, data) drops its one
        # element, and the PIL path gives the image instead: the first of the
        # two that yields one. The batch stays full and aligned.
        one = tf.data.Dataset.from_tensors(i)
        return (one.map(decode_with_tf).ignore_errors()
                .concatenate(one.map(decode_with_pil)).take(1))

    ds = tf.data.Dataset.counter(start=start_step).map(step_indices).unbatch()
    ds = ds.interleave(load, cycle_length=16, num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(prefetch)
