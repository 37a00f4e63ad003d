"""Small detection / segmentation data made from a classification set:
items (for example Fashion-MNIST images) pasted on a larger black canvas,
with their class masks and boxes. The package builds it itself, so the
downstream recipes need no download. numpy only.
"""

import numpy as np


def make_canvases(images, labels, count, canvas_size=64, max_items=3, threshold=32, seed=0):
    """Paste 1..`max_items` random items on each of `count` canvases.

    Items do not overlap (placement is retried; an item that finds no free
    place is left out). An item's box is the tight box of its pixels above
    `threshold`; its mask is those pixels.

    Args:
        images: uint8 `[n, h, w, c]` items.
        labels: int `[n]` classes (0..K-1).
        count: canvases to make.
        canvas_size: side of the square canvas (>= item size).
        max_items: most items per canvas.
        threshold: pixel value above which an item pixel belongs to it.

    Returns a dict of numpy arrays:
        `images` uint8 `[count, S, S, c]`;
        `masks` int32 `[count, S, S]`, 0 = background, k + 1 = class k;
        `boxes` float32 `[count, max_items, 4]` as `(y0, x0, y1, x1)` pixels
            (`yxyx`, exclusive end), padding rows -1;
        `classes` int32 `[count, max_items]`, padding -1;
        `instances` uint8 `[count, S, S]`, 0 = no item, g + 1 = the item in
            row g of `boxes` / `classes` (instance segmentation's truth).
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [n, h, w, c], received {images.dtype} "
                         f"{images.shape}.")
    n, h, w, c = images.shape
    if canvas_size < max(h, w):
        raise ValueError(f"canvas_size {canvas_size} is smaller than the items ({h} x {w}).")
    if not 1 <= max_items < 255:
        raise ValueError(f"max_items must be in 1..254, received {max_items}.")
    rng = np.random.default_rng(seed)
    out_images = np.zeros((count, canvas_size, canvas_size, c), np.uint8)
    masks = np.zeros((count, canvas_size, canvas_size), np.int32)
    boxes = np.full((count, max_items, 4), -1.0, np.float32)
    classes = np.full((count, max_items), -1, np.int32)
    instances = np.zeros((count, canvas_size, canvas_size), np.uint8)
    for i in range(count):
        occupied = np.zeros((canvas_size, canvas_size), bool)
        slot = 0
        for _ in range(rng.integers(1, max_items + 1)):
            k = rng.integers(n)
            item = images[k]
            pixels = item.max(axis=-1) > threshold
            if not pixels.any():
                continue
            ys, xs = np.nonzero(pixels)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            crop, crop_mask = item[y0:y1, x0:x1], pixels[y0:y1, x0:x1]
            ch, cw = crop_mask.shape
            for _ in range(20):
                top = rng.integers(0, canvas_size - ch + 1)
                left = rng.integers(0, canvas_size - cw + 1)
                if not occupied[top:top + ch, left:left + cw].any():
                    break
            else:
                continue
            region = (slice(top, top + ch), slice(left, left + cw))
            occupied[region] = True
            out_images[i][region] = np.where(crop_mask[..., None], crop, out_images[i][region])
            masks[i][region] = np.where(crop_mask, int(labels[k]) + 1, masks[i][region])
            instances[i][region] = np.where(crop_mask, slot + 1, instances[i][region])
            boxes[i, slot] = (top, left, top + ch, left + cw)
            classes[i, slot] = int(labels[k])
            slot += 1
    return {"images": out_images, "masks": masks, "boxes": boxes, "classes": classes,
            "instances": instances}
