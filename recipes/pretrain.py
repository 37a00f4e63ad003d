"""ConMIM pre-training, from the command line.

    python recipes/pretrain.py --backend jax
    python recipes/pretrain.py --backend torch --epochs 1 --steps-per-epoch 20

Default data: the Fashion-MNIST slice shipped inside the package (4,000
images, 28 x 28 gray). Writes to --output (default saved_models/):
`conmim.keras` (the whole pre-training model: student, teacher, heads,
optimizer state), `teacher_encoder.keras` and `student_encoder.keras`
(standalone ViT encoders; fine-tune from the teacher, as the release does).
"""

import argparse
import importlib.util
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("jax", "tensorflow", "torch")
MASKS = ("random", "block")


def _preset_names():
    # Read the preset table without importing keras: the backend must be set
    # before keras is imported, and bad flags should fail at once.
    path = os.path.join(ROOT, "keras_conmim", "presets.py")
    spec = importlib.util.spec_from_file_location("_conmim_presets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.PRESETS)


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}")
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="ConMIM pre-training on the packaged Fashion-MNIST slice.")
    parser.add_argument("--backend", choices=BACKENDS,
                        default=os.environ.get("KERAS_BACKEND", "jax"),
                        help="Keras backend (set before keras is imported).")
    parser.add_argument("--preset", choices=_preset_names(), default="vit_mini_p4_28",
                        help="encoder preset (architecture; no weights)")
    parser.add_argument("--epochs", type=_positive(int), default=2)
    parser.add_argument("--steps-per-epoch", type=_positive(int), default=None,
                        help="default: one pass over the data")
    parser.add_argument("--batch-size", type=_positive(int), default=64)
    parser.add_argument("--lr", type=_positive(float), default=5e-4,
                        help="peak learning rate (AdamW, betas 0.9/0.98)")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup-epochs", type=float, default=0.5,
                        help="linear warmup, then per-step cosine to 1e-5")
    parser.add_argument("--mask", choices=MASKS, default="random",
                        help="random units (SimMIM, ratio 0.75) or BEiT blocks")
    parser.add_argument("--output", default=os.path.join(ROOT, "saved_models"))
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


class Throughput:
    """Images/s over the steps after the first (which includes compilation)."""

    def __init__(self, batch_size):
        import keras

        outer = self

        class _Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                now = time.perf_counter()
                if outer.start is None:
                    outer.start = now
                else:
                    outer.batches += 1
                    outer.end = now

        self.batch_size = batch_size
        self.start = self.end = None
        self.batches = 0
        self.callback = _Callback()

    def images_per_second(self):
        if not self.batches:
            return float("nan")
        return self.batches * self.batch_size / (self.end - self.start)


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    sys.path.insert(0, ROOT)
    import keras
    import numpy as np

    import keras_conmim as kc
    from keras_conmim.datasets import load_default_data
    from keras_conmim.saving import save_atomic

    keras.utils.set_random_seed(args.seed)
    images, _ = load_default_data("train")
    model = kc.ConMIM.from_preset(args.preset, mask_generator=args.mask, seed=args.seed)
    channels = model.encoder.image_shape[-1]
    if images.shape[-1] != channels:
        images = np.repeat(images, channels, axis=-1)  # gray -> RGB presets

    steps = args.steps_per_epoch or len(images) // args.batch_size
    if steps < 1:
        raise SystemExit(f"--batch-size {args.batch_size} is larger than the "
                         f"{len(images)} images available.")
    total = steps * args.epochs
    warmup = min(int(args.warmup_epochs * steps), total - 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else args.lr, decay_steps=total - warmup,
        alpha=min(1e-5 / args.lr, 1.0), warmup_target=args.lr if warmup else None,
        warmup_steps=warmup)
    model.compile(optimizer=keras.optimizers.AdamW(
        schedule, weight_decay=args.weight_decay, beta_1=0.9, beta_2=0.98, epsilon=1e-8))

    print(f"ConMIM pre-training: backend={args.backend} preset={args.preset} "
          f"mask={args.mask} images={len(images)} batch={args.batch_size} "
          f"epochs={args.epochs} steps/epoch={steps}")
    throughput = Throughput(args.batch_size)
    data = images
    if args.steps_per_epoch and steps * args.batch_size > len(images):
        data = images[np.arange(steps * args.batch_size) % len(images)]
    history = model.fit(data, batch_size=args.batch_size, epochs=args.epochs,
                        steps_per_epoch=steps, shuffle=True,
                        callbacks=[throughput.callback], verbose=1)

    for name, obj in (("conmim", model), ("teacher_encoder", model.teacher_encoder),
                      ("student_encoder", model.encoder)):
        save_atomic(obj, os.path.join(args.output, f"{name}.keras"))
    logs = history.history
    print(f"done: {throughput.images_per_second():.1f} images/s, "
          f"final loss {logs['loss'][-1]:.4f}, "
          f"lookup accuracy {logs['lookup_accuracy'][-1]:.4f} "
          f"(chance {1 / model.encoder.num_patches:.4f}), "
          f"saved to {os.path.abspath(args.output)}")
    return model


if __name__ == "__main__":
    main()
