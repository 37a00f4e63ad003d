"""Patch mask generators, run on the device inside the compiled train step.

Both generators return `[B, N]` booleans (True = masked), N = h * w patches in
row-major order, drawn independently per image from `keras.random` with a
seed, so a fixed seed gives the same masks on every call sequence.
"""

import math

import keras
from keras import ops

from keras_conmim.models.distribute import global_batch_uniform

from keras_conmim.models.layers import PACKAGE, SeedStateMixin


class _MaskGenerator(SeedStateMixin, keras.layers.Layer):
    """Shared plumbing: grid, seed and the `call` / `sample` split."""

    def __init__(self, grid_size, seed=None, **kwargs):
        super().__init__(**kwargs)
        grid_size = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
        self.grid_size = tuple(int(g) for g in grid_size)
        if len(self.grid_size) != 2 or min(self.grid_size) < 1:
            raise ValueError(
                f"grid_size must be (rows, cols) of positive ints, received {grid_size}."
            )
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="mask_seed")
        self.built = True

    def call(self, inputs):
        """Masks for a batch: `inputs` is anything with the batch size as its
        first dimension (the images, usually)."""
        return self.sample(ops.shape(inputs)[0], seed=self.seed_generator)

    def sample(self, batch_size, seed=None):
        """`[batch_size, N]` bool masks. `seed`: int, `SeedGenerator` or
        None (this generator's own seed state)."""
        raise NotImplementedError

    def get_config(self):
        config = super().get_config()
        config.update(grid_size=self.grid_size, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class RandomUnitMasking(_MaskGenerator):
    """SimMIM-style random masking of square units of patches.

    The patch grid is cut into units of `unit_size x unit_size` patches (the
    release's "random_mps32" at 224/16 is `unit_size=2`: 32 px units); exactly
    `ceil(mask_ratio * num_units)` units are masked per image. Units that
    overhang the grid (grid not divisible by the unit) are cropped.

    Args:
        grid_size: int or tuple of 2 ints. Patch grid `(h, w)`.
        mask_ratio: float in (0, 1). Fraction of units to mask. Defaults to
            `0.75`.
        unit_size: int. Unit side in patches. Defaults to `2`.
        seed: int or None. Seed of the generator's own stream.
    """

    def __init__(self, grid_size, mask_ratio=0.75, unit_size=2, seed=None, **kwargs):
        super().__init__(grid_size, seed=seed, **kwargs)
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), received {mask_ratio}.")
        if unit_size < 1 or unit_size > min(self.grid_size):
            raise ValueError(
                f"unit_size must be in [1, {min(self.grid_size)}] for grid "
                f"{self.grid_size}, received {unit_size}."
            )
        self.mask_ratio = mask_ratio
        self.unit_size = unit_size
        self.unit_grid = tuple(math.ceil(g / unit_size) for g in self.grid_size)
        self.num_units = self.unit_grid[0] * self.unit_grid[1]
        # The tiny epsilon keeps 0.75 * 16 = 12 from rounding up to 13.
        self.num_masked_units = math.ceil(mask_ratio * self.num_units - 1e-9)

    def sample(self, batch_size, seed=None):
        seed = self.seed_generator if seed is None else seed
        noise = global_batch_uniform((batch_size, self.num_units), seed=seed)
        # Rank of each unit's noise: the k lowest are masked -> exactly k units.
        ranks = ops.argsort(ops.argsort(noise, axis=-1), axis=-1)
        units = ops.cast(ranks < self.num_masked_units, "int32")
        uh, uw = self.unit_grid
        units = ops.reshape(units, (-1, uh, 1, uw, 1))
        u = self.unit_size
        patches = ops.broadcast_to(units, (ops.shape(units)[0], uh, u, uw, u))
        patches = ops.reshape(patches, (-1, uh * u, uw * u))
        patches = patches[:, : self.grid_size[0], : self.grid_size[1]]
        return ops.reshape(patches, (-1, self.num_patches)) > 0

    def get_config(self):
        config = super().get_config()
        config.update(mask_ratio=self.mask_ratio, unit_size=self.unit_size)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class BlockMasking(_MaskGenerator):
    """BEiT block-wise masking, vectorised over the batch.

    Rectangles of at least `min_block_patches` patches (aspect ratio in
    `[min_aspect, 1 / min_aspect]`) are proposed and accepted while they add
    new patches without pushing the count above the target
    `round(mask_ratio * N)`, as in BEiT's generator. BEiT loops in Python per
    image; here a fixed number of proposals (`num_attempts`) is drawn for all
    images at once, so the whole generator compiles into the step. The count
    never exceeds the target and is usually equal to it.

    Args:
        grid_size: int or tuple of 2 ints. Patch grid `(h, w)`.
        mask_ratio: float in (0, 1). Target fraction of patches. Defaults to
            `75 / 196` (BEiT's 75 patches at 224/16).
        min_block_patches: int or None. Smallest block, in patches. `None`
            scales BEiT's 16-of-196 to the grid (at least 2). Defaults to None.
        min_aspect: float. Defaults to `0.3`.
        num_attempts: int. Block proposals per image. Defaults to `40`.
        seed: int or None.
    """

    def __init__(self, grid_size, mask_ratio=75 / 196, min_block_patches=None,
                 min_aspect=0.3, num_attempts=40, seed=None, **kwargs):
        super().__init__(grid_size, seed=seed, **kwargs)
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), received {mask_ratio}.")
        if not 0 < min_aspect <= 1:
            raise ValueError(f"min_aspect must be in (0, 1], received {min_aspect}.")
        self.mask_ratio = mask_ratio
        self.min_block_patches = min_block_patches
        self.min_aspect = min_aspect
        self.num_attempts = num_attempts
        self.num_masked = max(1, int(round(mask_ratio * self.num_patches)))
        if min_block_patches is None:
            min_block_patches = max(2, int(round(16 * self.num_patches / 196)))
        self.min_block = min(int(min_block_patches), self.num_masked)
        if self.min_block < 1:
            raise ValueError(
                f"min_block_patches must be >= 1, received {min_block_patches}."
            )

    def sample(self, batch_size, seed=None):
        seed = self.seed_generator if seed is None else seed
        gh, gw = self.grid_size
        target = float(self.num_masked)
        rand = global_batch_uniform((self.num_attempts, batch_size, 4), seed=seed, batch_axis=1)
        rows = ops.reshape(ops.arange(gh, dtype="float32"), (1, gh, 1))
        cols = ops.reshape(ops.arange(gw, dtype="float32"), (1, 1, gw))
        log_lo, log_hi = math.log(self.min_aspect), -math.log(self.min_aspect)
        mask = ops.zeros((batch_size, gh, gw), dtype="float32")
        for a in range(self.num_attempts):
            u = rand[a]
            remaining = target - ops.sum(mask, axis=(1, 2))  # [B]
            # BEiT: area ~ U(min_block, remaining), aspect log-uniform.
            area = self.min_block + u[:, 0] * (remaining - self.min_block)
            aspect = ops.exp(log_lo + u[:, 1] * (log_hi - log_lo))
            h = ops.round(ops.sqrt(area * aspect))
            w = ops.round(ops.sqrt(area / aspect))
            top = ops.floor(u[:, 2] * ops.maximum(gh - h + 1, 1.0))
            left = ops.floor(u[:, 3] * ops.maximum(gw - w + 1, 1.0))
            valid = (h >= 1) & (w >= 1) & (h <= gh) & (w <= gw)
            valid = valid & (h * w >= self.min_block)
            h, w, top, left = (ops.reshape(t, (-1, 1, 1)) for t in (h, w, top, left))
            block = ops.cast(
                (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w),
                "float32",
            )
            added = ops.sum(block * (1.0 - mask), axis=(1, 2))
            accept = valid & (added > 0) & (added <= remaining)
            mask = ops.maximum(mask, block * ops.reshape(ops.cast(accept, "float32"), (-1, 1, 1)))
        return ops.reshape(mask, (-1, self.num_patches)) > 0

    def get_config(self):
        config = super().get_config()
        config.update(
            mask_ratio=self.mask_ratio,
            min_block_patches=self.min_block_patches,
            min_aspect=self.min_aspect,
            num_attempts=self.num_attempts,
        )
        return config


MASK_GENERATORS = {"random": RandomUnitMasking, "block": BlockMasking}


def get_mask_generator(name, grid_size, **kwargs):
    """`"random"` -> RandomUnitMasking, `"block"` -> BlockMasking."""
    if name not in MASK_GENERATORS:
        raise ValueError(
            f"Unknown mask generator {name!r}. Valid: {', '.join(MASK_GENERATORS)}."
        )
    return MASK_GENERATORS[name](grid_size, **kwargs)
