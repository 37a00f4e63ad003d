"""Frozen-feature evaluation of a saved encoder: linear probe and kNN.

    python recipes/linear_probe.py --encoder saved_models/teacher_encoder.keras
    python recipes/linear_probe.py --encoder saved_models/teacher_encoder.keras --backend torch --k 20
    python recipes/linear_probe.py --from-scratch --preset vit_mini_p4_28    # random-init reference
    python recipes/linear_probe.py --raw-pixels --data idx:/usr/share/datasets/fashion-mnist
    python recipes/linear_probe.py --encoder E.keras --labels-per-class 10,100,all
    python recipes/linear_probe.py --data dir:photos/train --test-data dir:photos/test

Data: the packaged Fashion-MNIST slice (4,000 train / 1,000 test images with
labels), `--data idx:PATH` (the full IDX files: their folder or the train
images file), `dir:PATH` (one sub-folder per class) or `tfds:NAME[:SPLIT]`,
with `--test-data` of the same kinds (default: the data's own test split,
else a share held out by --seed; docs/data.md), resized and channel-converted
to the encoder's input. Features are the mean-pooled patch tokens (`ViT.pool`;
`--pooling cls`, `flatten` or `mean+flatten`), normalised as in pre-training.
`--raw-pixels` probes the pixels themselves (scaled to [0, 1], flattened):
the baseline a learned feature must beat. `--labels-per-class` gives the
probe's training set as N images per class (class-balanced, seeded by
--seed; the test split stays whole); features are extracted once for all the
counts. The probe trains at least 300 steps; with at most 1,000 images per
class its weight decay is picked by 4-fold cross-validation
(`keras_conmim.downstream.evaluation.probe_at_counts`). Prints one line per label count.
"""

import argparse
import sys

import recipe_main  # stdlib only: chooses the backend before Keras loads

if __name__ == "__main__":
    recipe_main.choose_backend()
from keras_conmim.runs import cli  # noqa: E402  (after choosing the backend)
from keras_conmim.runs.cli import parse_label_counts, result_line  # noqa: E402
from keras_conmim.errors import ConfigError  # noqa: E402
from keras_conmim.presets import POOLINGS  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = p.add_argument
    cli.add_encoder(p)  # --from-scratch: the random-init reference every probe is read against
    add("--raw-pixels", action="store_true", help="no encoder: probe the pixels (flattened, in "
        "[0, 1]); the image size is --preset's (default vit_mini_p4_28)")
    add("--labels-per-class", default="all", help="comma-separated label counts per class, "
        "'all' for every training image (e.g. 10,100,all)")
    cli.add_backend(p)
    cli.add_data(p)
    add("--resize", choices=("crop", "pad", "center"), default="crop", help="how images reach "
        "the encoder's size (center: pad 28 -> 32 px, as the vit_mini_p4_32 recipe does)")
    add("--pooling", choices=POOLINGS, default="mean", help="the features: mean of the patch "
        "tokens, the CLS token, the patch tokens flattened in grid order, or both")
    add("--probe-weight-decay", type=cli.linear_probe_weight_decay, default="auto",
        help="auto (cv with at most 1,000 labelled images per class, else 1e-4), cv (4-fold "
        "cross-validation: 16 extra fits) or a number >= 0")
    add("--k", type=int, default=20)
    add("--temperature", type=float, default=0.07)
    add("--probe-epochs", type=int, default=100)
    add("--seed", type=int, default=0)
    add("--results-json", default=None, help="also write the results here: {labels: {linear, "
        "knn}} in %%, the command and what was probed (what benchmarks read)")
    args = p.parse_args(argv)
    try:
        args.counts = parse_label_counts(args.labels_per_class)
    except ValueError as e:
        p.error(f"--labels-per-class {args.labels_per_class!r}: {e}")
    if args.raw_pixels and args.from_scratch:
        p.error("--raw-pixels probes no encoder: drop --from-scratch")
    if args.raw_pixels:
        args.preset = args.preset or "vit_mini_p4_28"
    else:
        cli.check_encoder(args)
    return args


def features(args):
    """`(splits, train features, test features, what was probed)`."""
    import keras_conmim as kc
    from keras_conmim.downstream import evaluation
    from keras_conmim.runs.finetuning import load_splits

    if args.raw_pixels:
        if args.preset not in kc.PRESETS:
            raise ConfigError(f"--preset {args.preset!r}: choose one of {', '.join(kc.PRESETS)}")
        shape = kc.PRESETS[args.preset]["config"]["image_shape"]
        splits = load_splits(args.data, shape, args.resize, test_spec=args.test_data,
                             seed=args.seed)
        pixels = [s.images.reshape(len(s.images), -1).astype("float32") / 255.0
                  for s in (splits.train, splits.test)]
        return (splits, *pixels, f"raw pixels, {'x'.join(map(str, shape))}")
    try:
        encoder = cli.load_start(args)
    except ValueError as e:
        raise ConfigError(f"--encoder {args.encoder} / --preset {args.preset}: {e}") from None
    if not encoder.built:
        encoder.build((None, *encoder.image_shape))
    splits = load_splits(args.data, encoder.image_shape, args.resize, test_spec=args.test_data,
                         seed=args.seed)
    found = [evaluation.extract_features(encoder, s.images, pooling=args.pooling)
             for s in (splits.train, splits.test)]
    what = ('random init, ' + (args.preset or 'architecture of ' + args.encoder)
            if args.from_scratch else args.encoder)
    return splits, *found, what + ("" if args.pooling == "mean" else f", {args.pooling} pooling")


def main(argv=None):
    args = parse_args(argv)
    cli.use_backend(args.backend)
    import keras

    from keras_conmim.downstream.evaluation import probe_at_counts

    keras.utils.set_random_seed(args.seed)
    splits, train_f, test_f, what = features(args)
    print("\n".join(splits.describe()), flush=True)
    train, test = splits.train, splits.test
    try:
        results = probe_at_counts(train_f, train.labels, test_f, test.labels, args.counts,
                                  k=args.k, temperature=args.temperature,
                                  epochs=args.probe_epochs,
                                  weight_decay=args.probe_weight_decay, seed=args.seed)
    except ValueError as e:
        raise ConfigError(f"--labels-per-class {args.labels_per_class}: {e}") from None
    for count, (linear, knn) in results.items():
        print(result_line(100 * linear, 100 * knn, args.k, len(test), what, str(count)),
              flush=True)
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
    return results if len(args.counts) > 1 else results[next(iter(results))]


if __name__ == "__main__":
    recipe_main.run(main)
