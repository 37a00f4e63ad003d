"""The flags the recipes share, defined once (keras-free: a recipe parses
and checks its flags before choosing the Keras backend).

    parser = argparse.ArgumentParser()
    cli.add_backend(parser)
    cli.add_encoder(parser)          # --encoder / --from-scratch / --preset
    cli.add_data(parser)
    args = parser.parse_args()
    cli.check_encoder(parser, args)
    cli.use_backend(args.backend)    # before anything imports keras
"""

import os

BACKENDS = ("jax", "tensorflow", "torch")
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


def check_at_least_one(parser, args, names):
    """Refuse (parser.error) any of the flags `names` (argparse dests) that
    was given a value below 1; flags left at None are skipped."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")


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


def add_data(parser, default="default"):
    parser.add_argument("--data", default=default,
                        help="default (the packaged Fashion-MNIST slice) | idx:PATH (a folder of "
                        "train-*/t10k-* IDX files, or the train images file)")


def encoder_exists(name):
    """Whether --encoder names something `load_encoder` can open."""
    from keras_conmim.presets import WEIGHTS

    return os.path.exists(name) or name in WEIGHTS


def check_encoder(parser, args):
    """--encoder / --from-scratch / --preset make sense together, else
    `parser.error` with the fix."""
    from keras_conmim.presets import PRESETS, WEIGHTS

    scratch = getattr(args, "from_scratch", False)
    preset = getattr(args, "preset", None)
    # Only recipes with --from-scratch can start from an architecture alone.
    or_scratch = " or pass --from-scratch" if hasattr(args, "from_scratch") else ""
    if preset is not None and preset not in PRESETS:
        parser.error(f"--preset {preset!r}: choose one of {', '.join(PRESETS)}")
    if args.encoder in PRESETS and not scratch:
        parser.error(f"--encoder {args.encoder}: an architecture preset has no weights; pass a "
                     f"preset with weights ({', '.join(WEIGHTS)}) or a .keras file"
                     + (f", or --from-scratch --preset {args.encoder}" if or_scratch else ""))
    if not scratch and not encoder_exists(args.encoder):
        parser.error(f"--encoder {args.encoder}: no such file, folder or preset with weights "
                     f"({', '.join(WEIGHTS)}). Pre-train first (python recipes/pretrain.py)"
                     f"{or_scratch}.")
    if scratch and not preset and not encoder_exists(args.encoder):
        parser.error("--from-scratch needs --preset, or an --encoder to copy the architecture from")


def load_start(args):
    """The encoder a run starts from: --encoder's weights, or with
    --from-scratch the same architecture at random init (--preset's, else
    --encoder's). Imports Keras."""
    from keras_conmim.saving import load_encoder
    from keras_conmim.vit import ViT

    if not getattr(args, "from_scratch", False):
        return load_encoder(args.encoder)
    return ViT.from_preset(getattr(args, "preset", None) or args.encoder, load_weights=False)


def use_backend(backend):
    """Set the Keras backend (`KERAS_BACKEND`); it takes effect at the first
    `import keras` of the process, so recipes call this before it."""
    os.environ["KERAS_BACKEND"] = backend


def encoder_path(name):
    """--encoder as an absolute path (a preset with weights: its file), the
    form run files record."""
    from keras_conmim.presets import WEIGHTS, weights_path

    if name in WEIGHTS and not os.path.exists(name):
        return os.path.abspath(weights_path(name))
    return os.path.abspath(name)
