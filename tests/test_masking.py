import math

import numpy as np
import pytest

import keras_conmim as kc
from conftest import to_numpy


@pytest.mark.parametrize("grid,ratio,unit", [((14, 14), 0.75, 2), ((8, 8), 0.75, 2),
                                             ((7, 7), 0.6, 2), ((6, 10), 0.5, 1)])
def test_random_units_mask_exact_count(grid, ratio, unit):
    gen = kc.RandomUnitMasking(grid, mask_ratio=ratio, unit_size=unit, seed=0)
    masks = to_numpy(gen.sample(32)).reshape(32, *grid)
    assert masks.dtype == bool
    units_h, units_w = math.ceil(grid[0] / unit), math.ceil(grid[1] / unit)
    expected = math.ceil(ratio * units_h * units_w)
    for m in masks:
        # Each unit is all-masked or all-visible; count the masked units.
        padded = np.full((units_h * unit, units_w * unit), -1, int)
        padded[: grid[0], : grid[1]] = m
        units = padded.reshape(units_h, unit, units_w, unit).transpose(0, 2, 1, 3)
        units = units.reshape(units_h * units_w, unit * unit)
        masked = []
        for cells in units:
            cells = cells[cells >= 0]
            assert cells.min() == cells.max(), "a unit is partly masked"
            masked.append(cells[0])
        assert sum(masked) == expected


def test_release_setting_masks_148_of_196():
    masks = to_numpy(kc.RandomUnitMasking((14, 14), 0.75, 2, seed=3).sample(8))
    assert (masks.sum(1) == 148).all()


def _covered_by_big_blocks(mask, min_area):
    """Every masked cell lies in a fully masked rectangle of >= min_area cells."""
    h, w = mask.shape
    ok = np.zeros_like(mask)
    for t in range(h):
        for b in range(t + 1, h + 1):
            for l in range(w):
                for r in range(l + 1, w + 1):
                    if (b - t) * (r - l) >= min_area and mask[t:b, l:r].all():
                        ok[t:b, l:r] = True
    return np.array_equal(ok, mask)


@pytest.mark.parametrize("grid,min_block", [((14, 14), 16), ((8, 8), 4)])
def test_block_masks_bounded_and_blocky(grid, min_block):
    gen = kc.BlockMasking(grid, min_block_patches=min_block, seed=0)
    target = round(75 / 196 * grid[0] * grid[1])
    masks = to_numpy(gen.sample(16)).reshape(16, *grid)
    counts = masks.reshape(16, -1).sum(1)
    assert (counts <= target).all()
    assert counts.mean() >= 0.8 * target, counts
    for m in masks:
        assert _covered_by_big_blocks(m, min_block)


@pytest.mark.parametrize("cls,kwargs", [(kc.RandomUnitMasking, {}), (kc.BlockMasking, {})])
def test_same_seed_same_masks(cls, kwargs):
    a = cls((8, 8), seed=7, **kwargs)
    b = cls((8, 8), seed=7, **kwargs)
    images = np.zeros((6, 32, 32, 3), "uint8")
    first_a, first_b = to_numpy(a(images)), to_numpy(b(images))
    np.testing.assert_array_equal(first_a, first_b)
    second_a = to_numpy(a(images))
    np.testing.assert_array_equal(second_a, to_numpy(b(images)))
    assert not np.array_equal(first_a, second_a), "the stream must advance"
    # Per image: images of one batch get different masks.
    assert len({m.tobytes() for m in first_a}) > 1
    c = cls((8, 8), seed=8, **kwargs)
    assert not np.array_equal(first_a, to_numpy(c(images)))


def test_explicit_seed_is_reproducible():
    gen = kc.BlockMasking((8, 8))
    np.testing.assert_array_equal(to_numpy(gen.sample(4, seed=5)), to_numpy(gen.sample(4, seed=5)))


@pytest.mark.parametrize("kwargs,match", [
    (dict(mask_ratio=1.0), "mask_ratio"),
    (dict(mask_ratio=0.0), "mask_ratio"),
    (dict(unit_size=9), "unit_size"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kc.RandomUnitMasking((8, 8), **kwargs)


def test_unknown_generator_lists_choices():
    with pytest.raises(ValueError, match="random, block"):
        kc.get_mask_generator("grid", (8, 8))
