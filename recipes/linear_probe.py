"""Frozen-feature evaluation of a saved encoder: linear probe and kNN.

    python recipes/linear_probe.py --encoder saved_models/teacher_encoder.keras
    python recipes/linear_probe.py --encoder saved_models/teacher_encoder.keras --backend torch --k 20
    python recipes/linear_probe.py --from-scratch --preset vit_mini_p4_28    # random-init reference

Data: the packaged Fashion-MNIST slice (4,000 train / 1,000 test images with
labels) or `--data idx:DIR` (the full IDX files), resized and channel-converted to the encoder's input. Features are
the mean-pooled patch tokens (`ViT.pool`), normalised as in pre-training.
Prints one line with both accuracies.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    parser.add_argument("--backend", choices=("jax", "tensorflow", "torch"),
                        default=os.environ.get("KERAS_BACKEND", "jax"))
    parser.add_argument("--data", default="default", help="default | idx:DIR (train-*/t10k-* IDX files)")
    parser.add_argument("--resize", choices=("crop", "pad", "center"), default="crop",
                        help="how images reach the encoder's size (center: pad 28 -> 32 px, "
                        "as the vit_mini_p4_32 recipe does)")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--probe-epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.from_scratch and args.preset) and not os.path.isfile(args.encoder):
        parser.error(f"--encoder {args.encoder}: file not found"
                     + ("" if args.from_scratch else " (or pass --from-scratch --preset NAME)"))
    os.environ["KERAS_BACKEND"] = args.backend
    sys.path.insert(0, ROOT)
    import keras

    import keras_conmim as kc
    from keras_conmim import evaluation
    from recipes.finetune import load_splits

    keras.utils.set_random_seed(args.seed)
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
    train_f = evaluation.extract_features(encoder, train.images)
    test_f = evaluation.extract_features(encoder, test.images)
    knn = evaluation.knn_accuracy(train_f, train.labels, test_f, test.labels,
                                  k=args.k, temperature=args.temperature)
    linear = evaluation.linear_probe(train_f, train.labels, test_f, test.labels,
                                     epochs=args.probe_epochs, seed=args.seed)
    print(f"linear probe top-1 {100 * linear:.2f}%, kNN (k={args.k}) top-1 {100 * knn:.2f}% "
          f"on {len(test)} test images "
          f"({'random init, ' + (args.preset or 'architecture of ' + args.encoder) if args.from_scratch else args.encoder})")
    return linear, knn


def parse_result(line):
    """(linear, kNN) top-1 in % from the last line `main` prints (for scripts
    that run this recipe as a subprocess)."""
    linear = float(line.split("linear probe top-1", 1)[1].split("%", 1)[0])
    knn = float(line.split("kNN", 1)[1].split("top-1", 1)[1].split("%", 1)[0])
    return linear, knn


if __name__ == "__main__":
    main()
