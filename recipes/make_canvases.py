"""Write the built-in detection / segmentation canvases in the real formats:
a COCO dataset (images, boxes, RLE masks, category names) and a mask-PNG
folder, so the `coco:` and `masks:` specs can be tried on data the package
makes, and the layout a set of your own needs is there to look at.

    python recipes/make_canvases.py --output canvases --rgb --canvas-size 64
    python recipes/detect.py --data coco:canvases/train/instances.json \
        --test-data coco:canvases/test/instances.json --canvas-size 64
    python recipes/segment.py --data masks:canvases/train/images:canvases/train/masks \
        --test-data masks:canvases/test/images:canvases/test/masks

Writes OUTPUT/train and OUTPUT/test, each with images/*.png,
instances.json (COCO: category ids 1..10 with Fashion-MNIST's names,
`--category-ids-from` shifts them, e.g. to 11..20, to show that ids need not
start at 1) and masks/*.png (0 background, k = class k) with
masks/classes.txt. Train canvases come from the training items, test
canvases from the test items (`--data`: default or idx:PATH).
"""

import argparse
import json
import os

import recipe_main  # stdlib only

if __name__ == "__main__":
    recipe_main.choose_backend()  # the package imports Keras; no training happens here


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="canvases", help="folder for train/ and test/")
    p.add_argument("--data", default="default",
                   help="the items: default (the packaged slice) or idx:PATH")
    p.add_argument("--train-canvases", type=int, default=200)
    p.add_argument("--test-canvases", type=int, default=50)
    p.add_argument("--canvas-size", type=int, default=64)
    p.add_argument("--max-items", type=int, default=2)
    p.add_argument("--rgb", action="store_true",
                   help="colour the items (a random tint per item), RGB PNGs")
    p.add_argument("--category-ids-from", type=int, default=1,
                   help="the first category id in the JSON files (ids need not be contiguous "
                   "from 1 in COCO files; the readers remap them)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from keras_conmim.errors import ConfigError

    for name in ("train_canvases", "test_canvases", "max_items"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
    import numpy as np

    from keras_conmim import data
    from keras_conmim.data.canvas import make_canvases
    from keras_conmim.data.dense import write_coco

    names = list(data.FASHION_MNIST_CLASSES)
    written = {}
    for stream, (split, items) in enumerate(zip(("train", "test"), data.load_splits(args.data))):
        canvases = make_canvases(items.images, items.labels, getattr(args, f"{split}_canvases"),
                                 args.canvas_size, args.max_items, seed=args.seed * 10 + stream)
        if args.rgb:
            canvases["images"] = tint(canvases, np.random.default_rng((args.seed, stream, 5)))
        folder = os.path.join(args.output, split)
        path = write_coco(canvases, folder, names)
        if args.category_ids_from != 1:
            shift_category_ids(path, args.category_ids_from - 1)
        written[split] = path
        print(f"{split}: {len(canvases['images'])} canvases -> {path}, "
              f"{os.path.join(folder, 'masks')}", flush=True)
    return written


def tint(canvases, rng):
    """RGB canvases: each item's pixels scaled by a colour of its own."""
    import numpy as np

    gray = canvases["images"][..., 0].astype("float32")
    out = np.repeat(gray[..., None], 3, axis=-1)
    for i in range(len(out)):
        colour = rng.uniform(0.4, 1.0, 3)
        for box, k in zip(canvases["boxes"][i], canvases["classes"][i]):
            if k >= 0:
                y0, x0, y1, x1 = (int(v) for v in box)
                out[i, y0:y1, x0:x1] *= colour
    return np.clip(out, 0, 255).astype("uint8")


def shift_category_ids(path, offset):
    with open(path) as f:
        coco = json.load(f)
    for c in coco["categories"]:
        c["id"] += offset
    for a in coco["annotations"]:
        a["category_id"] += offset
    with open(path, "w") as f:
        json.dump(coco, f)


if __name__ == "__main__":
    recipe_main.run(main)
