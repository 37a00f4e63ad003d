"""Frozen-feature evaluation of a saved encoder: linear probe and kNN.

    python recipes/linear_probe.py --encoder saved_models/teacher_encoder.keras
    python recipes/linear_probe.py --encoder saved_models/teacher_encoder.keras --backend torch --k 20
    python recipes/linear_probe.py --from-scratch --preset vit_mini_p4_28    # random-init reference

Data: the packaged Fashion-MNIST slice (4,000 train / 1,000 test images with
labels) or `--data idx:PATH` (the full IDX files: their folder or the train images file), resized and channel-converted to the encoder's input. Features are
the mean-pooled patch tokens (`ViT.pool`; `--pooling cls`, `flatten` or
`mean+flatten` for the CLS token, the patch tokens flattened in grid order, or
both concatenated), normalised as in
pre-training.
Prints one line with both accuracies per label count.

    python recipes/linear_probe.py --raw-pixels --data idx:/usr/share/datasets/fashion-mnist
    python recipes/linear_probe.py --encoder E.keras --labels-per-class 10,100,all

`--raw-pixels` probes the pixels themselves (scaled to [0, 1], flattened):
the baseline a learned feature must beat. `--labels-per-class` gives the
bank / probe's training set as N images per class (class-balanced, seeded by
--seed; the test split stays whole); features are extracted once for all the
counts. The probe trains at least 300 steps, and with at most 1,000 images
per class its weight decay is the one 4-fold cross-validation on the labelled
images picks (keras_conmim.evaluation.select_weight_decay; `--probe-weight-decay`
fixes it instead).
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from recipes.pretrain import keras_free_module  # noqa: E402  (no keras import)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder",
                        default=os.path.join(ROOT, "saved_models", "conmim_vit_mini_p4_28_fmnist.keras"),
                        help="any keras_conmim .keras file holding a ViT (default: the shipped "
                        "backbone; a ConMIM file gives its teacher)")
    parser.add_argument("--from-scratch", action="store_true",
                        help="probe a random-init encoder instead (the reference every probe "
                        "is read against): architecture from --preset, else from --encoder")
    parser.add_argument("--preset", default=None, help="architecture for --from-scratch")
    parser.add_argument("--raw-pixels", action="store_true",
                        help="no encoder: probe the pixels (flattened, in [0, 1]); the image "
                        "size is --preset's (default vit_mini_p4_28)")
    parser.add_argument("--labels-per-class", default="all",
                        help="comma-separated label counts per class, 'all' for every "
                        "training image (e.g. 10,100,all)")
    parser.add_argument("--backend", choices=("jax", "tensorflow", "torch"),
                        default=os.environ.get("KERAS_BACKEND", "jax"))
    parser.add_argument("--data", default="default", help="default | idx:PATH (a folder of train-*/t10k-* IDX files, or the train images file)")
    parser.add_argument("--resize", choices=("crop", "pad", "center"), default="crop",
                        help="how images reach the encoder's size (center: pad 28 -> 32 px, "
                        "as the vit_mini_p4_32 recipe does)")
    parser.add_argument("--pooling", choices=keras_free_module("presets.py").POOLINGS,
                        default="mean",
                        help="the features: mean of the patch tokens, the CLS token, the "
                        "patch tokens flattened in grid order (keeps where each patch is), or "
                        "the mean and the flattened tokens concatenated")
    parser.add_argument("--probe-weight-decay", type=probe_weight_decay, default="auto",
                        help="the linear probe's weight decay: auto (cv with at most 1,000 "
                        "labelled images per class, else 1e-4), cv (picked by 4-fold "
                        "cross-validation on the labelled images: 16 extra fits) or a number "
                        ">= 0")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--probe-epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        counts = parse_label_counts(args.labels_per_class)
    except ValueError as e:
        parser.error(f"--labels-per-class {args.labels_per_class!r}: {e}")
    if args.raw_pixels and args.from_scratch:
        parser.error("--raw-pixels probes no encoder: drop --from-scratch")
    if args.raw_pixels:
        args.preset = args.preset or "vit_mini_p4_28"
    elif not (args.from_scratch and args.preset) and not os.path.isfile(args.encoder):
        parser.error(f"--encoder {args.encoder}: file not found"
                     + ("" if args.from_scratch else " (or pass --from-scratch --preset NAME)"))
    os.environ["KERAS_BACKEND"] = args.backend
    import keras
    import numpy as np

    import keras_conmim as kc
    from keras_conmim import evaluation
    # few labels (at most this many per class): the probe's weight decay is
    # cross-validated, as for the LP-FT head
    from keras_conmim.finetune_budget import LP_FT_MAX_PER_CLASS
    from recipes.finetune import load_splits

    keras.utils.set_random_seed(args.seed)
    if args.raw_pixels:
        if args.preset not in kc.PRESETS:
            parser.error(f"--preset {args.preset!r}: choose one of {', '.join(kc.PRESETS)}")
        image_shape = kc.PRESETS[args.preset]["config"]["image_shape"]
        train, test = load_splits(args.data, image_shape, args.resize)
        pixels = lambda images: images.reshape(len(images), -1).astype("float32") / 255.0  # noqa: E731
        train_f, test_f = pixels(train.images), pixels(test.images)
        what = f"raw pixels, {'x'.join(map(str, image_shape))}"
    else:
        try:
            if args.from_scratch and args.preset:
                encoder = kc.ViT.from_preset(args.preset)
            else:
                encoder = kc.load_encoder(args.encoder)
                if args.from_scratch:  # same architecture, fresh weights
                    encoder = kc.ViT.from_config({**encoder.get_config(), "name": "vit"})
        except ValueError as e:
            parser.error(f"--encoder {args.encoder} / --preset {args.preset}: {e}")
        if not encoder.built:
            encoder.build((None, *encoder.image_shape))
        train, test = load_splits(args.data, encoder.image_shape, args.resize)
        train_f = evaluation.extract_features(encoder, train.images, pooling=args.pooling)
        test_f = evaluation.extract_features(encoder, test.images, pooling=args.pooling)
        what = ('random init, ' + (args.preset or 'architecture of ' + args.encoder)
                if args.from_scratch else args.encoder)
        what += "" if args.pooling == "mean" else f", {args.pooling} pooling"
    results = {}
    for count in counts:
        if count is None:
            index = np.arange(len(train))
        else:
            try:
                index = kc.data.class_balanced_indices(train.labels, count, seed=args.seed)
            except ValueError as e:
                parser.error(f"--labels-per-class {count}: {e}")
        knn = evaluation.knn_accuracy(train_f[index], train.labels[index], test_f, test.labels,
                                      k=args.k, temperature=args.temperature)
        few = len(index) <= LP_FT_MAX_PER_CLASS * len(np.unique(train.labels))
        weight_decay = (("cv" if few else 1e-4) if args.probe_weight_decay == "auto"
                        else args.probe_weight_decay)
        linear = evaluation.linear_probe(train_f[index], train.labels[index], test_f, test.labels,
                                         epochs=args.probe_epochs, min_steps=MIN_PROBE_STEPS,
                                         weight_decay=weight_decay, seed=args.seed)
        results["all" if count is None else count] = (linear, knn)
        print(f"linear probe top-1 {100 * linear:.2f}%, kNN (k={args.k}) top-1 {100 * knn:.2f}% "
              f"on {len(test)} test images ({what}) "
              f"[labels: {'all' if count is None else f'{count} per class'}]", flush=True)
    return results if len(counts) > 1 else results[next(iter(results))]


MIN_PROBE_STEPS = 300


def probe_weight_decay(text):
    """--probe-weight-decay: "auto", "cv" or a number >= 0."""
    from recipes import finetune  # no keras import

    return finetune.probe_weight_decay(text, words=("auto", "cv"))


def parse_label_counts(text):
    """'10,100,all' -> [10, 100, None] (None: every training image)."""
    counts = []
    for part in text.split(","):
        part = part.strip()
        if part == "all":
            counts.append(None)
        elif part.isdigit() and int(part) >= 1:
            counts.append(int(part))
        else:
            raise ValueError(f"{part!r} is not a positive count or 'all'")
    if not counts:
        raise ValueError("no label count given")
    return counts


def parse_results(lines):
    """{labels: (linear, kNN)} from the lines `main` prints, labels being
    'all' or an int count per class."""
    out = {}
    for line in lines:
        if line.startswith("linear probe top-1"):
            tag = line.rsplit("[labels: ", 1)[1].split("]")[0] if "[labels: " in line else "all"
            out["all" if tag == "all" else int(tag.split()[0])] = parse_result(line)
    return out


def parse_result(line):
    """(linear, kNN) top-1 in % from the last line `main` prints (for scripts
    that run this recipe as a subprocess)."""
    linear = float(line.split("linear probe top-1", 1)[1].split("%", 1)[0])
    knn = float(line.split("kNN", 1)[1].split("top-1", 1)[1].split("%", 1)[0])
    return linear, knn


if __name__ == "__main__":
    main()
