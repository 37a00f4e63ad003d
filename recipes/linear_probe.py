"""Frozen-feature evaluation of a saved encoder: linear probe and kNN.

    python recipes/linear_probe.py --encoder saved_models/teacher_encoder.keras
    python recipes/linear_probe.py --encoder saved_models/teacher_encoder.keras --backend torch --k 20
    python recipes/linear_probe.py --from-scratch --preset vit_mini_p4_28    # random-init reference

Data: the packaged Fashion-MNIST slice (4,000 train / 1,000 test images with
labels), `--data idx:PATH` (the full IDX files: their folder or the train
images file), `dir:PATH` (one sub-folder per class) or `tfds:NAME[:SPLIT]`,
with `--test-data` of the same kinds (default: the data's own test split,
else a share held out by --seed; docs/data.md), resized and channel-converted
to the encoder's input. Features are
the mean-pooled patch tokens (`ViT.pool`; `--pooling cls`, `flatten` or
`mean+flatten` for the CLS token, the patch tokens flattened in grid order, or
both concatenated), normalised as in
pre-training.
Prints one line with both accuracies per label count.

    python recipes/linear_probe.py --raw-pixels --data idx:/usr/share/datasets/fashion-mnist
    python recipes/linear_probe.py --encoder E.keras --labels-per-class 10,100,all
    python recipes/linear_probe.py --data dir:photos/train --test-data dir:photos/test

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
import recipe_main  # stdlib only: chooses the backend before Keras loads

if __name__ == "__main__":
    recipe_main.choose_backend()
from keras_conmim import cli  # noqa: E402  (after choosing the backend)
from keras_conmim.errors import ConfigError  # noqa: E402
from keras_conmim.cli import parse_label_counts, result_line  # noqa: E402
from keras_conmim.presets import POOLINGS  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_encoder(parser)  # --from-scratch: the random-init reference every probe is read against
    parser.add_argument("--raw-pixels", action="store_true",
                        help="no encoder: probe the pixels (flattened, in [0, 1]); the image "
                        "size is --preset's (default vit_mini_p4_28)")
    parser.add_argument("--labels-per-class", default="all",
                        help="comma-separated label counts per class, 'all' for every "
                        "training image (e.g. 10,100,all)")
    cli.add_backend(parser)
    cli.add_data(parser)
    parser.add_argument("--resize", choices=("crop", "pad", "center"), default="crop",
                        help="how images reach the encoder's size (center: pad 28 -> 32 px, "
                        "as the vit_mini_p4_32 recipe does)")
    parser.add_argument("--pooling", choices=POOLINGS, default="mean",
                        help="the features: mean of the patch tokens, the CLS token, the "
                        "patch tokens flattened in grid order (keeps where each patch is), or "
                        "the mean and the flattened tokens concatenated")
    parser.add_argument("--probe-weight-decay", type=cli.linear_probe_weight_decay, default="auto",
                        help="the linear probe's weight decay: auto (cv with at most 1,000 "
                        "labelled images per class, else 1e-4), cv (picked by 4-fold "
                        "cross-validation on the labelled images: 16 extra fits) or a number "
                        ">= 0")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--probe-epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-json", default=None,
                        help="also write the results here: {labels: {linear, knn}} in %%, the "
                        "command and what was probed (what benchmarks read)")
    args = parser.parse_args(argv)
    try:
        counts = parse_label_counts(args.labels_per_class)
    except ValueError as e:
        parser.error(f"--labels-per-class {args.labels_per_class!r}: {e}")
    if args.raw_pixels and args.from_scratch:
        parser.error("--raw-pixels probes no encoder: drop --from-scratch")
    if args.raw_pixels:
        args.preset = args.preset or "vit_mini_p4_28"
    else:
        try:
            cli.check_encoder(args)
        except ConfigError as e:
            parser.error(str(e))
    cli.use_backend(args.backend)
    import keras
    import numpy as np

    import keras_conmim as kc
    from keras_conmim import evaluation
    # few labels (at most this many per class): the probe's weight decay is
    # cross-validated, as for the LP-FT head
    from keras_conmim.finetune_budget import LP_FT_MAX_PER_CLASS
    from keras_conmim.finetune_run import load_splits

    keras.utils.set_random_seed(args.seed)
    if args.raw_pixels:
        if args.preset not in kc.PRESETS:
            parser.error(f"--preset {args.preset!r}: choose one of {', '.join(kc.PRESETS)}")
        image_shape = kc.PRESETS[args.preset]["config"]["image_shape"]
        splits = load_splits(args.data, image_shape, args.resize, test_spec=args.test_data,
                             seed=args.seed)
        pixels = lambda images: images.reshape(len(images), -1).astype("float32") / 255.0  # noqa: E731
        train, test = splits.train, splits.test
        train_f, test_f = pixels(train.images), pixels(test.images)
        what = f"raw pixels, {'x'.join(map(str, image_shape))}"
    else:
        try:
            encoder = cli.load_start(args)
        except ValueError as e:
            parser.error(f"--encoder {args.encoder} / --preset {args.preset}: {e}")
        if not encoder.built:
            encoder.build((None, *encoder.image_shape))
        splits = load_splits(args.data, encoder.image_shape, args.resize,
                             test_spec=args.test_data, seed=args.seed)
        train, test = splits.train, splits.test
        train_f = evaluation.extract_features(encoder, train.images, pooling=args.pooling)
        test_f = evaluation.extract_features(encoder, test.images, pooling=args.pooling)
        what = ('random init, ' + (args.preset or 'architecture of ' + args.encoder)
                if args.from_scratch else args.encoder)
        what += "" if args.pooling == "mean" else f", {args.pooling} pooling"
    print("\n".join(splits.describe()), flush=True)
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
        print(result_line(100 * linear, 100 * knn, args.k, len(test), what,
                          "all" if count is None else str(count)), flush=True)
    if args.results_json:
        import json

        from keras_conmim.atomic import write_text_atomic

        write_text_atomic(args.results_json, json.dumps(dict(
            probed=what, k=args.k, test_images=len(test), data=args.data,
            test_data=splits.test_from, class_names=list(splits.class_names),
            skipped=splits.skipped_counts(),
            command=["recipes/linear_probe.py", *(sys.argv[1:] if argv is None else argv)],
            results={str(k): dict(linear=round(100 * v[0], 2), knn=round(100 * v[1], 2))
                     for k, v in results.items()}), indent=2))
    return results if len(counts) > 1 else results[next(iter(results))]


MIN_PROBE_STEPS = 300


if __name__ == "__main__":
    recipe_main.run(main)
