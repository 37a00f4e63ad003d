"""The flags the recipes share, defined once, their checks, and the result
lines the recipes print and the benchmarks re-read.

    parser = argparse.ArgumentParser()
    cli.add_backend(parser)
    cli.add_encoder(parser)          # --encoder / --from-scratch / --preset
    cli.add_data(parser)
    args = parser.parse_args()
    try:
        cli.check_encoder(args)      # ConfigError naming the flag and the fix
    except ConfigError as e:
        parser.error(str(e))         # the recipe decides to exit

The backend itself is chosen before this module is imported (importing the
package imports Keras): recipes/recipe_main.py reads --backend from argv.
"""

import os

from keras_conmim.errors import ConfigError
from keras_conmim.runs.config import BACKENDS
from keras_conmim.models.loading import load_encoder
from keras_conmim.presets import PRESETS, WEIGHTS, weights_path
from keras_conmim.models.vit import ViT

SHIPPED = "conmim_vit_mini_p4_28_fmnist"  # the preset with weights the recipes start from


def probe_weight_decay(text, words=("cv",)):
    """A --probe-weight-decay value: one of `words` or a number >= 0."""
    import argparse

    if text in words:
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: {', '.join(words)} or a number >= 0, "
                                          "e.g. 1e-4")
    return value


def check_at_least_one(args, names):
    """ConfigError for the first of the flags `names` (argparse dests) that
    was given a value below 1; flags left at None are skipped."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")


def add_backend(parser, default=None):
    """--backend, defaulting to $KERAS_BACKEND (else jax, or `default`)."""
    parser.add_argument("--backend", choices=BACKENDS,
                        default=default or os.environ.get("KERAS_BACKEND", "jax"),
                        help="Keras backend (default: $KERAS_BACKEND, else jax)")


def add_encoder(parser, scratch=True):
    """--encoder (a file, a preset folder or a preset with weights; default: the
    shipped backbone) and, with `scratch`, --from-scratch / --preset."""
    parser.add_argument("--encoder", default=SHIPPED,
                        help="a .keras file holding a ViT (a ConMIM file gives its EMA teacher, "
                        "as the release does), a preset folder, or a preset with weights "
                        f"(default: {SHIPPED}, the shipped Fashion-MNIST backbone)")
    if scratch:
        parser.add_argument("--from-scratch", action="store_true",
                            help="random init instead of --encoder's weights, same architecture "
                            "(from --preset if given, else from --encoder)")
        parser.add_argument("--preset", default=None,
                            help="architecture preset for --from-scratch")


LABELLED_SPECS = ("default (the packaged Fashion-MNIST slice) | idx:PATH (a folder of train-*/t10k-* "
                  "IDX files, or the train images file) | dir:PATH (one sub-folder per class) | "
                  "tfds:NAME[:SPLIT]")
DENSE_SPECS = ("default (canvases of the packaged Fashion-MNIST items) | idx:PATH (canvases of "
               "those items) | coco:ANNOTATIONS.json[:IMAGE_DIR] | masks:IMAGE_DIR:MASK_DIR "
               "(segmentation: index PNGs, 0 background, 255 ignore)")


def add_data(parser, default="default", specs=LABELLED_SPECS):
    """--data and --test-data (where not given: the data's own test split, else
    a share of --data held out by --seed; docs/data.md lists the specs)."""
    parser.add_argument("--data", default=default, help=f"training data: {specs}")
    parser.add_argument("--test-data", default=None,
                        help="test data, the same kinds of spec (default: the dataset's own "
                        "test split, else a share of --data held out by --seed)")


def encoder_exists(name):
    """Whether --encoder names something `load_encoder` can open."""
    return os.path.exists(name) or name in WEIGHTS


def check_encoder(args):
    """--encoder / --from-scratch / --preset make sense together, else
    ConfigError with the fix."""
    scratch = getattr(args, "from_scratch", False)
    preset = getattr(args, "preset", None)
    # Only recipes with --from-scratch can start from an architecture alone.
    or_scratch = " or pass --from-scratch" if hasattr(args, "from_scratch") else ""
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"--preset {preset!r}: choose one of {', '.join(PRESETS)}")
    if args.encoder in PRESETS and not scratch:
        raise ConfigError(f"--encoder {args.encoder}: an architecture preset has no weights; pass a "
                     f"preset with weights ({', '.join(WEIGHTS)}) or a .keras file"
                     + (f", or --from-scratch --preset {args.encoder}" if or_scratch else ""))
    if not scratch and not encoder_exists(args.encoder):
        raise ConfigError(f"--encoder {args.encoder}: no such file, folder or preset with weights "
                     f"({', '.join(WEIGHTS)}). Pre-train first (python recipes/pretrain.py)"
                     f"{or_scratch}.")
    if scratch and not preset and not encoder_exists(args.encoder):
        raise ConfigError("--from-scratch needs --preset, or an --encoder to copy the architecture from")


def load_start(args):
    """The encoder a run starts from: --encoder's weights, or with
    --from-scratch the same architecture at random init (--preset's, else
    --encoder's). A file that holds no usable ViT (another model, a `Lambda`
    safe mode refuses, a preset folder with a hostile config) is a
    ConfigError naming --encoder."""
    try:
        if not getattr(args, "from_scratch", False):
            return load_encoder(args.encoder)
        return ViT.from_preset(getattr(args, "preset", None) or args.encoder, load_weights=False)
    except (ValueError, OSError, TypeError) as e:
        raise ConfigError(f"--encoder {args.encoder}: {e}") from None


def use_backend(backend):
    """Check that Keras runs on `backend` (--backend) in this process. The
    backend is fixed at the first `import keras`, which importing this
    package already did: recipes choose it from argv before that
    (recipes/recipe_main.py); a mismatch is a ConfigError saying so."""
    import keras

    if keras.backend.backend() != backend:
        raise ConfigError(
            f"--backend {backend}: Keras is already running on {keras.backend.backend()} in "
            "this process (the backend is fixed at the first `import keras`). Run the recipe as "
            "a command (it sets KERAS_BACKEND from --backend first), or set KERAS_BACKEND before "
            "importing keras_conmim.")


def encoder_path(name):
    """--encoder as an absolute path (a preset with weights: its file), the
    form run files record."""
    if name in WEIGHTS and not os.path.exists(name):
        return os.path.abspath(weights_path(name))
    return os.path.abspath(name)


def result_line(linear, knn, k, test_images, what, labels):
    """The line printed per label count (`labels`: "all" or a count per class);
    also how scripts render a --results-json file for people."""
    return (f"linear probe top-1 {linear:.2f}%, kNN (k={k}) top-1 {knn:.2f}% on {test_images} test "
            f"images ({what}) [labels: {'all' if labels == 'all' else f'{labels} per class'}]")


def result_lines(result):
    """Every line of a --results-json file, as `main` printed them."""
    return [result_line(v["linear"], v["knn"], result["k"], result["test_images"],
                        result["probed"], labels) for labels, v in result["results"].items()]


def linear_probe_weight_decay(text):
    """--probe-weight-decay: "auto", "cv" or a number >= 0."""
    return probe_weight_decay(text, words=("auto", "cv"))


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
