"""Detection and segmentation sets for the downstream recipes, from the
formats users have, in the form the package's canvases take.

    coco:ANNOTATIONS.json[:IMAGE_DIR]   COCO: boxes, polygons / RLE masks, crowd regions
                                        (IMAGE_DIR default: the JSON's folder)
    masks:IMAGE_DIR:MASK_DIR            semantic masks: index PNGs paired by file stem,
                                        0 = background, k = class k, 255 = ignore
    default, idx:PATH                   the built-in canvases of those items (`data.canvas`)

Every set is a `DenseSet`: a dict of numpy arrays at one square size S (the
recipe's canvas size), the same keys as `data.canvas.make_canvases` returns —
`images` uint8 `[n, S, S, C]`, `masks` int32 `[n, S, S]` (0 background, k + 1
class k, 255 ignore), `boxes` float32 `[n, G, 4]` yxyx pixels and `classes`
int32 `[n, G]` (padding -1), `instances` int32 `[n, S, S]` (0 no object, g + 1
the object in row g, 255 ignore; all 0 for `masks:` sets) — plus `crowd_boxes` / `crowd_classes` (regions
COCO evaluation ignores), and attributes `class_names`, `skipped` (`{what:
count}`), `notes` (what was converted, in words) and `has_boxes` /
`has_masks`. Images of another size are letterboxed (scaled to fit, padded
at the bottom and right; the padding is ignored by the segmentation loss and
metric) and their boxes and masks moved with them.

Bad input is counted and skipped, never a traceback: an image that is missing
or does not decode, an annotation of an unknown image or category, a box of
zero area (a box reaching outside its image is clipped and counted), a mask
of another size than its image, an image without its mask. A spec that cannot
work at all (missing file, no images) is a `ValueError` naming the fix.
"""

import json
import os

import numpy as np

from keras_conmim.data.images import (
    IMAGE_EXTENSIONS, _pil, channel_conversion, convert_channels, decode_file,
)
from keras_conmim.downstream.metrics import IGNORE

DENSE_SPECS = "coco:ANNOTATIONS.json[:IMAGE_DIR], masks:IMAGE_DIR:MASK_DIR"


class DenseSet(dict):
    """The arrays of a detection / segmentation set (see the module
    docstring) with what reading it found."""

    def __init__(self, arrays, class_names, skipped=None, notes=(), has_boxes=True,
                 has_masks=True, source=""):
        super().__init__(arrays)
        self.class_names = tuple(class_names)
        self.skipped = {k: v for k, v in (skipped or {}).items() if v}
        self.notes = list(notes)
        self.has_boxes, self.has_masks = has_boxes, has_masks
        self.source = source

    def __len__(self):  # images, not keys
        return len(self["images"])

    def take(self, index):
        """A `DenseSet` of the images at `index`, with the same names."""
        return DenseSet({k: v[index] for k, v in self.items()}, self.class_names, self.skipped,
                        self.notes, self.has_boxes, self.has_masks, self.source)


def _fit(array, size, resample, fill):
    """`[h, w]` or `[h, w, c]` (uint8, or int32 labels) scaled to fit a `size` square (PIL
    `resample`) and padded with `fill` at the bottom and right, so a box keeps
    its origin: `(array, scale)`."""
    h, w = array.shape[:2]
    scale = min(size / h, size / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    out = np.full((size, size, *array.shape[2:]), fill, array.dtype)
    if (nh, nw) != (h, w):
        flat = array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array
        array = np.asarray(_pil().fromarray(flat).resize((nw, nh), resample)).reshape(
            nh, nw, *array.shape[2:])
    out[:nh, :nw] = array
    return out, scale


def letterbox(image, size):
    """uint8 `[h, w, c]` -> `([size, size, c], scale)`: bilinear, padded with
    zeros."""
    return _fit(image, size, _pil().BILINEAR, 0)


def letterbox_mask(mask, size):
    """int `[h, w]` label map -> int32 `[size, size]` by nearest neighbour,
    the padding `IGNORE`."""
    return _fit(mask.astype(np.int32), size, _pil().NEAREST, IGNORE)[0]


def _channels(image, channels):
    return convert_channels(image, "rgb" if channels == 3 else "gray")


def _channel_note(native, channels):
    return channel_conversion(native, "rgb" if channels == 3 else "gray")


def _pack(items, class_names, skipped, notes, has_boxes, has_masks, source):
    """items: dicts with image, mask, boxes [k, 4], classes [k], crowd [m, 4],
    crowd_classes [m] (already letterboxed)."""
    if not items:
        raise ValueError(f"{source}: no usable image (skipped: "
                         + (", ".join(f"{n} {k}" for k, n in skipped.items() if n) or "none")
                         + ").")
    most = max(1, max(len(it["classes"]) for it in items))
    most_crowd = max(1, max(len(it["crowd_classes"]) for it in items))
    n = len(items)
    arrays = {
        "images": np.stack([it["image"] for it in items]),
        "masks": np.stack([it["mask"] for it in items]).astype(np.int32),
        "instances": np.stack([it.get("instances", np.zeros_like(it["mask"]))
                               for it in items]).astype(np.int32),
        "boxes": np.full((n, most, 4), -1.0, np.float32),
        "classes": np.full((n, most), -1, np.int32),
        "crowd_boxes": np.full((n, most_crowd, 4), -1.0, np.float32),
        "crowd_classes": np.full((n, most_crowd), -1, np.int32),
    }
    for i, it in enumerate(items):
        k, m = len(it["classes"]), len(it["crowd_classes"])
        arrays["boxes"][i, :k] = it["boxes"]
        arrays["classes"][i, :k] = it["classes"]
        arrays["crowd_boxes"][i, :m] = it["crowd"]
        arrays["crowd_classes"][i, :m] = it["crowd_classes"]
    return DenseSet(arrays, class_names, skipped, notes, has_boxes, has_masks, source)


# ---- COCO --------------------------------------------------------------------

def _mask_api():
    try:
        from pycocotools import mask as mask_api
    except ImportError as e:
        raise ImportError("coco: specs decode polygons and RLE masks with pycocotools: "
                          "pip install pycocotools (or the package's .[coco] extra)") from e
    return mask_api


def decode_segmentation(segmentation, height, width):
    """A COCO `segmentation` (polygons, uncompressed or compressed RLE) as a
    bool `[height, width]` mask (pycocotools). ValueError when it does not
    fit an image of that size."""
    mask_api = _mask_api()
    if isinstance(segmentation, list):  # polygons
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            raise ValueError("a polygon needs at least 3 points")
        rle = mask_api.merge(mask_api.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        size = [int(v) for v in segmentation.get("size", ())]
        if size != [height, width]:
            raise ValueError(f"RLE of size {size}, image {height} x {width}")
        if isinstance(segmentation["counts"], list):
            if sum(segmentation["counts"]) != height * width:
                raise ValueError(f"RLE counts cover {sum(segmentation['counts'])} pixels, "
                                 f"the image {height * width}")
            rle = mask_api.frPyObjects(segmentation, height, width)
        else:
            counts = segmentation["counts"]
            rle = {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
    else:
        raise ValueError(f"unknown segmentation of type {type(segmentation).__name__}")
    return mask_api.decode(rle).astype(bool)


def read_coco(annotations, image_dir=None, size=64, channels=1):
    """A COCO detection / instance-segmentation file as a `DenseSet`.

    Category ids become contiguous classes in id order (`class_names` from
    the categories' names). `iscrowd` regions are not trained on as objects:
    they are kept as `crowd_boxes` (ignored by `coco_map`, as COCO evaluation
    does) and painted as ignore in the semantic masks. Masks come from
    polygons or RLE (pycocotools); a file with no `segmentation` has boxes
    only (`has_masks` False)."""
    if not os.path.isfile(annotations):
        raise ValueError(f"annotation file not found: {annotations!r}. Pass "
                         "coco:PATH/instances.json[:IMAGE_DIR].")
    try:
        with open(annotations) as f:
            coco = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{annotations}: not a JSON file ({e}).") from None
    missing = [k for k in ("images", "annotations", "categories") if k not in coco]
    if missing:
        raise ValueError(f"{annotations}: not a COCO file (no {', '.join(missing)}); a COCO "
                         "file holds images, annotations and categories.")
    image_dir = _coco_image_dir(annotations, image_dir)
    if not os.path.isdir(image_dir):
        raise ValueError(f"image folder not found: {image_dir!r} (the part after the JSON in "
                         "coco:ANNOTATIONS.json:IMAGE_DIR).")
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    if not categories:
        raise ValueError(f"{annotations}: no categories.")
    index = {c["id"]: k for k, c in enumerate(categories)}
    images = {im["id"]: im for im in coco["images"]}
    by_image = {i: [] for i in images}
    skipped = {k: 0 for k in ("missing image", "unreadable image", "annotation of an unknown image",
                              "unknown category id", "zero-area box", "box clipped to its image",
                              "mask of another size than its image", "image of another size "
                              "than its record")}
    for ann in coco["annotations"]:
        if ann.get("image_id") not in by_image:
            skipped["annotation of an unknown image"] += 1
        elif ann.get("category_id") not in index:
            skipped["unknown category id"] += 1
        else:
            by_image[ann["image_id"]].append(ann)
    has_masks = any("segmentation" in a and a["segmentation"] for a in coco["annotations"])
    items, notes = [], set()
    for image_id in sorted(images):
        record = images[image_id]
        path = os.path.join(image_dir, record["file_name"])
        if not os.path.isfile(path):
            skipped["missing image"] += 1
            continue
        try:
            native = decode_file(path)
        except Exception:  # noqa: BLE001 -- any decoder failure: skip and count
            skipped["unreadable image"] += 1
            continue
        h, w = native.shape[:2]
        if (record.get("height", h), record.get("width", w)) != (h, w):
            skipped["image of another size than its record"] += 1
            continue
        note = _channel_note(native, channels)
        if note:
            notes.add(note)
        if (h, w) != (size, size):
            notes.add(f"letterboxed to {size} x {size} (scaled to fit, padded at the bottom and "
                      "right; boxes and masks moved with them)")
        image, scale = letterbox(_channels(native, channels), size)
        semantic = np.zeros((h, w), np.int32)
        instances = np.zeros((h, w), np.int32)  # g + 1: the object in row g
        crowd_pixels = np.zeros((h, w), bool)
        boxes, classes, crowd, crowd_classes = [], [], [], []
        # large objects first, so a small one on top of a large one stays visible
        for ann in sorted(by_image[image_id], key=lambda a: -float(a.get("area", 0) or 0)):
            x, y, bw, bh = (float(v) for v in ann.get("bbox", (0, 0, 0, 0)))
            y0, x0, y1, x1 = max(0.0, y), max(0.0, x), min(float(h), y + bh), min(float(w), x + bw)
            if y1 - y0 <= 0 or x1 - x0 <= 0:
                skipped["zero-area box"] += 1
                continue
            if (y0, x0, y1, x1) != (y, x, y + bh, x + bw):
                skipped["box clipped to its image"] += 1
            pixels = None
            if has_masks and ann.get("segmentation"):
                try:
                    pixels = decode_segmentation(ann["segmentation"], h, w)
                except ValueError:
                    skipped["mask of another size than its image"] += 1
                    continue
            k = index[ann["category_id"]]
            box = np.array([y0, x0, y1, x1], np.float32) * scale
            if ann.get("iscrowd", 0):
                crowd.append(box)
                crowd_classes.append(k)
                if pixels is not None:
                    crowd_pixels |= pixels
                continue
            boxes.append(box)
            classes.append(k)
            if pixels is not None:
                semantic[pixels] = k + 1
                instances[pixels] = len(boxes)
        semantic[crowd_pixels & (semantic == 0)] = IGNORE
        instances[crowd_pixels & (instances == 0)] = IGNORE
        items.append(dict(image=image, mask=letterbox_mask(semantic, size),
                          instances=letterbox_mask(instances, size),
                          boxes=np.reshape(boxes, (-1, 4)), classes=classes,
                          crowd=np.reshape(crowd, (-1, 4)), crowd_classes=crowd_classes))
    return _pack(items, [str(c.get("name", c["id"])) for c in categories],
                 skipped, sorted(notes), True, has_masks, f"coco:{annotations}")


# ---- semantic masks ----------------------------------------------------------

def read_mask_folder(image_dir, mask_dir, size=64, channels=1):
    """`masks:IMAGE_DIR:MASK_DIR` as a `DenseSet` (segmentation only): each
    image paired with the PNG of the same stem in MASK_DIR, whose pixel values
    are classes (0 background, k = class k, 255 ignore). Class names from
    MASK_DIR/classes.txt (one name a line, class 1 first) where it exists."""
    for folder, what in ((image_dir, "IMAGE_DIR"), (mask_dir, "MASK_DIR")):
        if not os.path.isdir(folder):
            raise ValueError(f"{what} not found: {folder!r}. Pass masks:IMAGE_DIR:MASK_DIR.")
    images = {os.path.splitext(os.path.basename(f))[0]: f for f in _images_in(image_dir)}
    masks = {os.path.splitext(f)[0]: os.path.join(mask_dir, f)
             for f in sorted(os.listdir(mask_dir)) if f.lower().endswith(".png")}
    if not images:
        raise ValueError(f"no images in {image_dir!r} ({', '.join(IMAGE_EXTENSIONS)}).")
    skipped = {"image without a mask": len(set(images) - set(masks)),
               "mask without an image": len(set(masks) - set(images)),
               "unreadable image": 0, "unreadable mask": 0,
               "mask of another size than its image": 0}
    items, notes, largest = [], set(), 0
    for stem in sorted(set(images) & set(masks)):
        try:
            native = decode_file(images[stem])
        except Exception:  # noqa: BLE001
            skipped["unreadable image"] += 1
            continue
        try:
            mask = _read_index_png(masks[stem])
        except Exception:  # noqa: BLE001
            skipped["unreadable mask"] += 1
            continue
        if mask.shape != native.shape[:2]:
            skipped["mask of another size than its image"] += 1
            continue
        note = _channel_note(native, channels)
        if note:
            notes.add(note)
        if native.shape[:2] != (size, size):
            notes.add(f"letterboxed to {size} x {size} (masks by nearest neighbour)")
        largest = max(largest, int(mask[mask != IGNORE].max(initial=0)))
        image, _ = letterbox(_channels(native, channels), size)
        items.append(dict(image=image, mask=letterbox_mask(mask, size),
                          boxes=np.zeros((0, 4)), classes=[], crowd=np.zeros((0, 4)),
                          crowd_classes=[]))
    names = _class_names_file(mask_dir, largest)
    return _pack(items, names, skipped, sorted(notes), False, True,
                 f"masks:{image_dir}:{mask_dir}")


def _images_in(folder):
    """The image files directly in `folder`, sorted."""
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder))
            if f.lower().endswith(IMAGE_EXTENSIONS)]


def _read_index_png(path):
    with _pil().open(path) as img:
        if img.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"{path}: an index mask is one channel (mode L or P), not {img.mode}")
        return np.asarray(img).astype(np.int32)


def _class_names_file(mask_dir, largest):
    path = os.path.join(mask_dir, "classes.txt")
    if os.path.isfile(path):
        with open(path) as f:
            names = [line.strip() for line in f if line.strip()]
        if len(names) >= largest:
            return names
        raise ValueError(f"{path} names {len(names)} classes, the masks use values up to "
                         f"{largest}: one name a line for classes 1..{largest}.")
    return [f"class {k}" for k in range(1, largest + 1)]


# ---- specs and splits --------------------------------------------------------

def is_dense_spec(spec):
    return spec.split(":", 1)[0] in ("coco", "masks")


def read_dense(spec, size, channels):
    """A `coco:` / `masks:` spec as a `DenseSet` at `size` x `size` with
    `channels` (1 or 3). ValueError naming the fix for any other spec."""
    kind, _, rest = spec.partition(":")
    if kind == "coco" and rest:
        path, image_dir = _coco_parts(rest)
        return read_coco(path, image_dir, size, channels)
    if kind == "masks" and rest:
        image_dir, _, mask_dir = rest.partition(":")
        if not mask_dir:
            raise ValueError("masks: takes two folders, masks:IMAGE_DIR:MASK_DIR.")
        return read_mask_folder(image_dir, mask_dir, size, channels)
    raise ValueError(f"{spec!r} is not a detection / segmentation spec. Use one of: "
                     f"{DENSE_SPECS}.")


def _coco_parts(rest):
    """'a/b.json:images' -> ('a/b.json', 'images'); 'a/b.json' -> ('a/b.json', None)."""
    path, sep, image_dir = rest.partition(".json:")
    return (path + ".json", image_dir) if sep else (rest, None)


def _coco_image_dir(annotations, image_dir):
    """IMAGE_DIR of a coco: spec; by default the JSON's folder."""
    return image_dir or os.path.dirname(os.path.abspath(annotations))


def image_paths(spec):
    """The image files of a `coco:` / `masks:` spec (what pre-training reads
    of it; labels unused), sorted; missing files left out."""
    kind, _, rest = spec.partition(":")
    if kind == "coco":
        path, image_dir = _coco_parts(rest)
        if not os.path.isfile(path):
            raise ValueError(f"annotation file not found: {path!r}.")
        with open(path) as f:
            records = json.load(f).get("images", [])
        files = [os.path.join(_coco_image_dir(path, image_dir), r["file_name"]) for r in records]
    elif kind == "masks":
        image_dir = rest.partition(":")[0]
        if not os.path.isdir(image_dir):
            raise ValueError(f"IMAGE_DIR not found: {image_dir!r}.")
        files = _images_in(image_dir)
    else:
        raise ValueError(f"{spec!r} is not a coco: or masks: spec.")
    files = sorted(f for f in files if os.path.isfile(f))
    if not files:
        raise ValueError(f"{spec}: none of its images exist.")
    return files


def split_off(dense, share, seed, stream):
    """`(kept, held)`: `share` of the images (at least one) drawn by
    (seed, stream) held out, both in their original order."""
    n = len(dense)
    if n < 2:
        raise ValueError(f"{dense.source}: {n} image; a held-out split needs at least 2.")
    order = np.random.default_rng((seed, stream)).permutation(n)
    count = min(n - 1, max(1, int(round(share * n))))
    return dense.take(np.sort(order[count:])), dense.take(np.sort(order[:count]))


def first(dense, count, seed):
    """At most `count` images of `dense`, drawn by seed (a labelled budget)."""
    if count is None or count >= len(dense):
        return dense
    order = np.random.default_rng((seed, 3)).permutation(len(dense))
    return dense.take(np.sort(order[:count]))


# ---- writing the canvases in the real formats ---------------------------------

def write_coco(canvases, folder, class_names, name="instances"):
    """Write canvases (`data.canvas.make_canvases`' dict) as a COCO dataset:
    `folder/images/*.png`, `folder/<name>.json` (boxes, masks as compressed
    RLE when pycocotools is installed, else uncompressed RLE) and
    `folder/masks/*.png` (index masks, 0 background, k = class k). Returns
    the JSON's path."""
    Image = _pil()
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    os.makedirs(os.path.join(folder, "masks"), exist_ok=True)
    try:
        from pycocotools import mask as mask_api
    except ImportError:
        mask_api = None
    images, annotations = [], []
    for i, image in enumerate(canvases["images"]):
        h, w = image.shape[:2]
        file_name = f"images/{i:06d}.png"  # relative to the JSON's folder, the default IMAGE_DIR
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
            os.path.join(folder, file_name))
        Image.fromarray(canvases["masks"][i].astype(np.uint8)).save(
            os.path.join(folder, "masks", f"{i:06d}.png"))
        images.append({"id": i + 1, "file_name": file_name, "height": h, "width": w})
        for box, k in zip(canvases["boxes"][i], canvases["classes"][i]):
            if k < 0:
                continue
            y0, x0, y1, x1 = (int(v) for v in box)
            pixels = np.zeros((h, w), bool)
            pixels[y0:y1, x0:x1] = canvases["masks"][i][y0:y1, x0:x1] == k + 1
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": int(k) + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(pixels.sum()), "iscrowd": 0,
                "segmentation": _rle(pixels, mask_api)})
    path = os.path.join(folder, f"{name}.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": [{"id": k + 1, "name": n} for k, n in enumerate(class_names)]}, f)
    with open(os.path.join(folder, "masks", "classes.txt"), "w") as f:
        f.write("\n".join(class_names) + "\n")
    return path


def _rle(pixels, mask_api):
    if mask_api is not None:
        rle = mask_api.encode(np.asfortranarray(pixels.astype(np.uint8)))
        return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}
    flat = pixels.T.reshape(-1).astype(np.int8)  # column-major, as COCO's RLE
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [len(flat)]])
    counts = ([0] if flat[0] else []) + np.diff(bounds).tolist()
    return {"size": list(pixels.shape), "counts": counts}
