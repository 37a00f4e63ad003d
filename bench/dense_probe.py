"""A frozen-feature probe of each downstream start on validation canvases
(#43): how much of the segmentation task the encoder's patch features hold
before any head is trained, to choose a pre-training's length (and compare
starts) without touching the test canvases.

For each start, the encoder (frozen, at the canvas size: position tables
resized as the downstream recipes resize them) encodes training and
validation canvases (made exactly as `bench/downstream_benchmark.py`'s rows
make them, seed 0: `keras_conmim.runs.downstream.make_splits`); a linear probe
(`keras_conmim.downstream.evaluation.fit_linear_head`) maps each patch token
to its patch's majority label (background or one of the 10 classes) and is
scored on the validation canvases' patches: mIoU and the accuracy on item
patches.

    python bench/dense_probe.py --backend torch                 # the table, writes results
    python bench/dense_probe.py --backend torch --again         # every start again
    python bench/dense_probe.py --report                        # the table from the results

Starts: the ViT at random init (vit_mini_p4_48, seed 0), the shipped backbone
(28 px items), pixel regression on the 28 px items, and each checkpoint of
the task-image pre-training (`bench/results/canvas48_e2/pretrain`, teacher),
and pixel regression pre-trained on the same canvases (its student). Starts
already in the results (same backend) are kept; `--again` probes them anew.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "recipes"))
OUT = os.path.join(ROOT, "bench", "results", "dense_probe.json")
TASK_RUN = os.path.join(ROOT, "bench", "results", "canvas48_e2", "pretrain")
# pixel regression on the 28 px items and on the same canvases: the benchmark's starts
from downstream_benchmark import PIXEL, TASK_PIXEL  # noqa: E402
DATA = "idx:/usr/share/datasets/fashion-mnist"
CANVASES = {"train": 500, "val": 300}  # probe fit / probe score (the benchmark's val count)


def starts():
    """[(name, how to get the encoder)]: what exists here, in table order."""
    found = [("random init", "vit_mini_p4_48"),
             ("shipped backbone (28 px items, 6 epochs)", "conmim_vit_mini_p4_28_fmnist")]
    if os.path.isfile(PIXEL):
        found.append(("pixel regression (28 px items)", PIXEL))
    folder = os.path.join(TASK_RUN, "checkpoints")
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if name.startswith("ckpt-") and name.endswith(".keras"):
                found.append((f"task images, step {int(name[5:13])}", os.path.join(folder, name)))
    final = os.path.join(TASK_RUN, "teacher_encoder.keras")
    if os.path.isfile(final) and not any(n.startswith("task") for n, _ in found):
        found.append(("task images, end of run", final))  # its last checkpoint is the same teacher
    if os.path.isfile(TASK_PIXEL):
        with open(os.path.join(os.path.dirname(TASK_PIXEL), "results.json")) as f:
            step = json.load(f)["step"]
        found.append((f"pixel regression on task images, step {step}", TASK_PIXEL))
    return found


def encoder_for(how, size):
    import keras_conmim as kc
    from keras_conmim.models.resize import resize_encoder

    if how in kc.PRESETS and kc.list_presets()[how]["weights"] is None:
        import keras

        keras.utils.set_random_seed(0)
        encoder = kc.ViT.from_preset(how)
    else:
        encoder = kc.load_encoder(how)
    return resize_encoder(encoder, (size, size, encoder.image_shape[2]))


def patch_labels(masks, patch):
    """The majority label of each patch: [n, (S/p)^2]."""
    import numpy as np

    n, s, _ = masks.shape
    g = s // patch
    blocks = masks.reshape(n, g, patch, g, patch).transpose(0, 1, 3, 2, 4).reshape(n, g * g, -1)
    counts = np.stack([(blocks == k).sum(-1) for k in range(int(masks.max()) + 1)], -1)
    return counts.argmax(-1)


def features(encoder, images, batch=100):
    import keras
    import numpy as np

    import keras_conmim as kc

    out = []
    for i in range(0, len(images), batch):
        tokens = encoder(kc.normalize_images(images[i:i + batch]), training=False)
        out.append(keras.ops.convert_to_numpy(tokens)[:, 1:])  # patch tokens, no [CLS]
    return np.concatenate(out)


def probe(encoder, train, val, num_classes):
    import numpy as np

    from keras_conmim.downstream.evaluation import fit_linear_head
    from keras_conmim.downstream.metrics import mean_iou

    patch = encoder.patch_size
    x_fit, x_val = features(encoder, train["images"]), features(encoder, val["images"])
    y_fit, y_val = patch_labels(train["masks"], patch), patch_labels(val["masks"], patch)
    d = x_fit.shape[-1]
    kernel, bias, _ = fit_linear_head(x_fit.reshape(-1, d), y_fit.reshape(-1), num_classes,
                                      epochs=20, batch_size=1024, lr=1e-2, weight_decay=1e-4)
    predicted = np.argmax(x_val.reshape(-1, d) @ kernel + bias, -1)
    truth = y_val.reshape(-1)
    items = truth > 0
    return {"miou": 100 * mean_iou(predicted, truth, num_classes),
            "item_accuracy": 100 * float(np.mean(predicted[items] == truth[items])),
            "background_share": 100 * float(np.mean(~items))}


def pretext(name):
    """The pre-training's lookup accuracy at a checkpoint's step, from its log.csv."""
    import csv

    if not name.startswith("task images, step"):
        return None
    step = int(name.rsplit(" ", 1)[1])
    path = os.path.join(TASK_RUN, "log.csv")
    if step == 0 or not os.path.isfile(path):
        return None
    with open(os.path.join(TASK_RUN, "config.json")) as f:
        epochs = json.load(f)["epochs"]
    with open(os.path.join(TASK_RUN, "results.json")) as f:
        per_epoch = json.load(f)["step"] // epochs
    with open(path) as f:
        rows = list(csv.DictReader(f))
    row = rows[min(step // per_epoch, len(rows)) - 1]
    return 100 * float(row["lookup_accuracy"])


def table(results):
    lines = ["| start | probe mIoU % (val) | item-patch accuracy % | pretext lookup accuracy % |",
             "|---|---|---|---|"]
    for name, r in results["rows"].items():
        lookup = "-" if r.get("lookup_accuracy") is None else f"{r['lookup_accuracy']:.1f}"
        lines.append(f"| {name} | {r['miou']:.2f} | {r['item_accuracy']:.2f} | {lookup} |")
    lines.append(f"\n{results['about']}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="torch", choices=("jax", "tensorflow", "torch"))
    p.add_argument("--report", action="store_true", help="print the table from the results")
    p.add_argument("--again", action="store_true", help="probe the starts already in the results")
    args = p.parse_args(argv)
    if args.report:
        with open(OUT) as f:
            print(table(json.load(f)))
        return
    os.environ["KERAS_BACKEND"] = args.backend
    from keras_conmim.presets import DOWNSTREAM_RECIPE
    from keras_conmim.runs.downstream import make_splits

    from keras_conmim import data
    from keras_conmim.atomic import write_text_atomic

    class Recipe:  # what make_splits reads of the downstream recipe
        canvas_size, max_items = DOWNSTREAM_RECIPE["canvas_size"], DOWNSTREAM_RECIPE["max_items"]

    items = data.load_splits(DATA, channels="gray")
    train, val, _ = make_splits(items, Recipe, CANVASES["train"], CANVASES["val"], 1, seed=0)
    num_classes = int(items[0].labels.max()) + 2  # + background
    rows = {}
    if os.path.isfile(OUT) and not args.again:
        with open(OUT) as f:
            kept = json.load(f)
        rows = kept["rows"] if kept["backend"] == args.backend else {}
    for name, how in starts():
        if name in rows:
            continue
        encoder = encoder_for(how, Recipe.canvas_size)
        rows[name] = {**probe(encoder, train, val, num_classes), "lookup_accuracy": pretext(name),
                      "encoder": os.path.relpath(how, ROOT) if os.path.isfile(how) else how}
        print(name, {k: round(v, 2) for k, v in rows[name].items() if isinstance(v, float)},
              flush=True)
    about = (f"Linear probe on frozen patch tokens ({Recipe.canvas_size} px canvases, patch 4: "
             f"{(Recipe.canvas_size // 4) ** 2} patches each), fitted on {CANVASES['train']} "
             f"training canvases, scored on {CANVASES['val']} validation canvases (held-out "
             f"training items), seed 0; {args.backend} backend. Item-patch accuracy: patches whose "
             f"majority label is an item ({100 - rows['random init']['background_share']:.0f}% of "
             "them); the rest is background.")
    results = {"rows": rows, "about": about, "backend": args.backend}
    write_text_atomic(OUT, json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
