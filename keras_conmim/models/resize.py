"""Run a pre-trained encoder at another image size.

Detection and segmentation want larger inputs than pre-training saw (the
Fashion-MNIST backbone is pre-trained at 28 px; the downstream canvases are
larger). `resize_encoder` builds the same `ViT` at a new image size and
carries every weight over; only the position tables depend on the patch
grid, and those are resampled with cubic interpolation (numpy, so every
backend gets the same numbers):

- relative position bias tables (BEiT): the `(2h-1) x (2w-1)` table of
  relative offsets is resampled to `(2H-1) x (2W-1)` with offsets scaled
  by `(H-1)/(h-1)` (the largest offset maps onto the largest offset); the
  three CLS entries are kept.
- learned absolute position embeddings: the patch grid is resampled
  (half-pixel centres, like an image resize); the CLS entry is kept.
- sin-cos tables are recomputed by the new `ViT`.
"""

import keras
import numpy as np

from keras_conmim.models.vit import ViT


def _cubic(t, a=-0.5):
    t = np.abs(t)
    return np.where(
        t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1,
        np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0))


def interpolation_matrix(n_in, n_out, align_corners):
    """`[n_out, n_in]` cubic (Keys, a=-0.5) resampling matrix with edge
    clamping. `align_corners=True` maps first/last onto first/last."""
    if n_in == n_out:
        return np.eye(n_in)
    if align_corners:
        pos = np.arange(n_out) * ((n_in - 1) / max(n_out - 1, 1))
    else:
        pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(pos).astype(int)
    matrix = np.zeros((n_out, n_in))
    for offset in range(-1, 3):
        idx = base + offset
        weight = _cubic(pos - idx)
        np.add.at(matrix, (np.arange(n_out), np.clip(idx, 0, n_in - 1)), weight)
    return matrix / matrix.sum(axis=1, keepdims=True)


def resize_relative_position_table(table, old_grid, new_grid):
    """BEiT table `[(2h-1)(2w-1) + 3, heads]` for grid `old_grid` ->
    the table for `new_grid`."""
    (h, w), (nh, nw) = old_grid, new_grid
    heads = table.shape[-1]
    grid = table[: (2 * h - 1) * (2 * w - 1)].reshape(2 * h - 1, 2 * w - 1, heads)
    rows = interpolation_matrix(2 * h - 1, 2 * nh - 1, align_corners=True)
    cols = interpolation_matrix(2 * w - 1, 2 * nw - 1, align_corners=True)
    grid = np.einsum("ij,jkh,lk->ilh", rows, grid, cols)
    return np.concatenate([grid.reshape(-1, heads), table[-3:]]).astype(table.dtype)


def resize_position_embedding(pos_embed, old_grid, new_grid):
    """Learned `[1, 1 + h*w, D]` table (CLS first) -> `[1, 1 + H*W, D]`."""
    (h, w), (nh, nw) = old_grid, new_grid
    cls, grid = pos_embed[:, :1], pos_embed[0, 1:].reshape(h, w, -1)
    rows = interpolation_matrix(h, nh, align_corners=False)
    cols = interpolation_matrix(w, nw, align_corners=False)
    grid = np.einsum("ij,jkd,lk->ild", rows, grid, cols).reshape(1, nh * nw, -1)
    return np.concatenate([cls, grid], axis=1).astype(pos_embed.dtype)


def resize_encoder(encoder, image_shape, **overrides):
    """A new `ViT` for `image_shape` (height and width divisible by the
    patch size, same channels) with `encoder`'s weights; `overrides` change
    other constructor arguments that do not affect weights (for example
    `drop_path_rate`). Returns `encoder` itself when nothing changes."""
    image_shape = tuple(int(s) for s in image_shape)
    if len(image_shape) != 3 or image_shape[2] != encoder.image_shape[2]:
        raise ValueError(
            f"image_shape must be (height, width, {encoder.image_shape[2]}) (the encoder's "
            f"channels), received {image_shape}.")
    if image_shape == tuple(encoder.image_shape) and not overrides:
        return encoder
    config = {**encoder.get_config(), **overrides, "image_shape": image_shape}
    config.pop("name", None)
    resized = ViT.from_config(config)
    old_grid, new_grid = encoder.grid_size, resized.grid_size
    old_by_path = {_local_path(v): v for v in encoder.weights}
    for new in resized.weights:
        old = old_by_path.get(_local_path(new))
        if old is None:
            raise ValueError(f"{encoder.name} has no weight for {new.path}")
        value = keras.ops.convert_to_numpy(old)
        name = old.path.split("/")[-1]
        if old_grid != new_grid and name == "relative_position_bias_table":
            new.assign(resize_relative_position_table(value, old_grid, new_grid))
        elif old_grid != new_grid and name == "pos_embed":
            if encoder.position_embedding == "absolute":  # sin-cos: the new ViT's own table
                new.assign(resize_position_embedding(value, old_grid, new_grid))
        elif tuple(old.shape) == tuple(new.shape):
            new.assign(value)
        else:  # not reachable for a ViT: only position tables depend on the grid
            raise ValueError(f"cannot carry {old.path} {old.shape} over to {new.shape}")
    return resized


def _local_path(variable):
    return variable.path.split("/", 1)[-1]
