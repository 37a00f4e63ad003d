"""Export a pre-trained encoder for serving and downstream heads, and check
the exported file against the Keras model.

    python recipes/export.py --encoder conmim_vit_mini_p4_28_fmnist \
        --format onnx --output exported/encoder.onnx --backend jax
    python recipes/export.py --encoder runs/pretrain/checkpoints/ckpt-0004.keras \
        --format tf_saved_model --output exported/encoder_savedmodel

--encoder takes any .keras file keras_conmim writes (a ViT, a ConMIM model or
checkpoint: its teacher unless --student, a ServingEncoder, a classifier).
Formats: keras (any backend), tf_saved_model (jax or tensorflow backend, needs
TensorFlow), onnx (jax backend with jax2onnx, tensorflow backend with
tf2onnx). Every format takes float images [B, H, W, C] in 0..255 and returns
patch_tokens [B, N, D] and pooled [B, D]. After writing, the file is loaded
back and its outputs compared with the Keras model on random images; the
largest difference is printed and a difference above --atol is an error.
"""

import argparse
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import recipe_main  # stdlib only: chooses the backend before Keras loads

if __name__ == "__main__":
    recipe_main.choose_backend()
from keras_conmim.runs import cli  # noqa: E402  (after choosing the backend)
from keras_conmim.errors import ConfigError  # noqa: E402

FORMATS = ("keras", "tf_saved_model", "onnx")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_encoder(p, scratch=False)
    p.add_argument("--student", action="store_true", help="export a ConMIM file's student")
    p.add_argument("--format", choices=FORMATS, default="keras")
    p.add_argument("--output", required=True)
    p.add_argument("--pooling", choices=("mean", "cls"), default="mean")
    cli.add_backend(p)
    p.add_argument("--atol", type=float, default=1e-5)
    args = p.parse_args(argv)
    try:
        cli.check_encoder(args)
    except ConfigError as e:
        p.error(str(e))
    if args.format != "keras" and args.backend == "torch":
        p.error(f"--format {args.format} needs --backend jax or tensorflow")
    if args.format == "keras" and not args.output.endswith(".keras"):
        p.error("--format keras needs an --output ending in .keras")
    if os.path.exists(args.output):
        p.error(f"--output {args.output} exists; choose a new path")
    problem = output_problem(args.output)
    if problem:
        p.error(f"--output {args.output}: {problem}")
    if args.format == "onnx":  # known before the model loads
        import importlib.util

        converter = {"jax": "jax2onnx", "tensorflow": "tf2onnx"}[args.backend]
        missing = [m for m in ("onnx", converter) if importlib.util.find_spec(m) is None]
        if missing:
            p.error(f"--format onnx on --backend {args.backend} needs {' and '.join(missing)}: "
                    "pip install 'keras-conmim[onnx]'")
    return args


def output_problem(path):
    """Why a file or folder cannot be written at `path` (checked before the
    model loads), or None: its nearest existing parent must be a folder this
    process can write into."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{parent} is a file, not a folder; pass a path in a folder"
    if not os.access(parent, os.W_OK):
        return f"cannot write in {parent}; pass a folder you can write"
    return None


def reload_outputs(path, format, images):
    """Outputs of the exported file, loaded the way a user would."""
    import keras

    if format == "keras":
        out = keras.saving.load_model(path)(images)
        return {k: keras.ops.convert_to_numpy(v) for k, v in out.items()}
    if format == "tf_saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(path)
        return {k: v.numpy() for k, v in loaded.serve(tf.constant(images)).items()}
    import onnxruntime

    session = onnxruntime.InferenceSession(path)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"images": images})))


def main(argv=None):
    args = parse_args(argv)
    cli.use_backend(args.backend)
    import keras
    import numpy as np

    from keras_conmim.integrations.export import ServingEncoder, export_encoder
    from keras_conmim.models.loading import load_encoder

    try:
        encoder = load_encoder(args.encoder, which="student" if args.student else "teacher")
    except (ValueError, OSError) as e:  # not a ViT, a Lambda, a hostile preset config...
        raise ConfigError(f"--encoder {args.encoder}: {e}") from None
    path = export_encoder(encoder, args.output, format=args.format, pooling=args.pooling)
    h, w, c = encoder.image_shape
    images = np.random.default_rng(0).uniform(0, 255, (4, h, w, c)).astype("float32")
    expected = ServingEncoder(encoder, pooling=args.pooling)(images)
    got = reload_outputs(path, args.format, images)
    diff = max(float(np.abs(got[k] - keras.ops.convert_to_numpy(expected[k])).max())
               for k in ("patch_tokens", "pooled"))
    print(f"exported {args.format} to {path}; input images [B, {h}, {w}, {c}] in 0..255; "
          f"outputs patch_tokens [B, {encoder.num_patches}, {encoder.hidden_dim}], "
          f"pooled [B, {encoder.hidden_dim}]; max |exported - keras| = {diff:.2e}")
    if diff > args.atol:
        raise SystemExit(f"error: exported outputs differ from the Keras model by {diff:.2e} "
                         f"> --atol {args.atol}")


if __name__ == "__main__":
    recipe_main.run(main)
