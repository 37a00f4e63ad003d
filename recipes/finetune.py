"""Fine-tune a pre-trained encoder into a classifier (the release's recipe,
scaled to the run), or train the same classifier from scratch.

    python recipes/finetune.py            # the shipped backbone, packaged data
    python recipes/finetune.py --encoder saved_models/teacher_encoder.keras
    python recipes/finetune.py --from-scratch --preset vit_mini_p4_28
    python recipes/finetune.py --data idx:/usr/share/datasets/fashion-mnist --epochs 30
    python recipes/finetune.py --data idx:/usr/share/datasets/fashion-mnist --labels-per-class 100

Recipe values (epochs, batch, lr, warmup, decay, drop path, mixing,
RandAugment) come from the preset's recipe (`PRESETS[name]["finetune"]` for a
pre-trained encoder, `["scratch"]` with --from-scratch: --preset, or the
preset whose architecture the encoder has), then are scaled to the run's
length and number of labelled images (`keras_conmim.finetune_budget`: small
batch and at least --min-steps steps with few labels, MixUp / CutMix / drop
path / RandAugment magnitude / crop / flip ramped up with the run's optimizer
steps from --ramp-start-steps (5,000) on, warm-up
at most a fifth of the run; --fixed-recipe turns the scaling off). A flag's value
is never scaled; the run prints every value and where it came from.
`--labels-per-class N` fine-tunes on a class-balanced subset of N images per
class (seeded by --seed; the test split stays whole). The model: mean-pooled tokens +
LayerNorm + head (for a pre-trained encoder with at most 1,000 labels per class
first fitted as a linear probe on the frozen features, LP-FT; else initialised
x0.001); the
shared relative position bias copied into every block; layer-wise lr decay
(the 224 px presets: the release's 0.65, patch embedding/CLS lowest, head and
final norm at 1; the small presets: none, measured better after a short
pre-training); drop path 0.1; the release's train-time geometry (a random crop of
the image zero-padded by 4 px + flip at 32 px or less, a random resized crop +
flip above, where test images are center-cropped at 0.875;
`keras_conmim.data.geometry`), RandAugment, random erasing (0.25 for the 224
px presets, off for the small ones), then MixUp or CutMix (one of the two per
batch) with label smoothing 0.1; AdamW with linear warmup then per-step cosine. Data: the
packaged Fashion-MNIST slice (default) or `idx:PATH`: the folder of the full
Fashion-MNIST IDX files, or its train images file. Prints the test top-1 and saves the classifier.

Every epoch end checkpoints into --checkpoint-dir; the same command run again
continues from the last epoch (--no-resume starts over). The checkpoints go
once --output is saved.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from recipes.pretrain import keras_free_module, load_presets as _presets  # noqa: E402  (no keras import)

_geometry = keras_free_module("data/geometry.py")
CROPS, check_geometry = _geometry.CROPS, _geometry.check_geometry


def probe_weight_decay(text, words=("cv",)):
    """--probe-weight-decay: one of `words` or a number >= 0."""
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder",
                   default=os.path.join(ROOT, "saved_models", "conmim_vit_mini_p4_28_fmnist.keras"),
                   help="pre-trained .keras file (default: the shipped Fashion-MNIST backbone); "
                   "a ConMIM model or checkpoint gives its EMA teacher, as the release does")
    p.add_argument("--from-scratch", action="store_true",
                   help="random init instead of --encoder (same architecture; the preset's "
                   "from-scratch recipe, without layer decay)")
    p.add_argument("--preset", default=None,
                   help="architecture for --from-scratch without an --encoder file")
    p.add_argument("--backend", choices=("jax", "tensorflow", "torch"),
                   default=os.environ.get("KERAS_BACKEND", "jax"))
    p.add_argument("--data", default="default", help="default | idx:PATH (a folder of train-*/t10k-* IDX files, or the train images file)")
    p.add_argument("--labels-per-class", type=int, default=None,
                   help="fine-tune on N labelled images per class (class-balanced, seeded by "
                   "--seed); default: every training image")
    p.add_argument("--min-steps", type=int, default=None,
                   help="few labels: raise the epochs until the run has this many steps "
                   "(default finetune_budget.MIN_STEPS; 0: off)")
    p.add_argument("--ramp-start-steps", type=int, default=None,
                   help="the optimizer steps up to which MixUp, CutMix, RandAugment, drop "
                   "path, random erasing, crop and flip are off (default "
                   "finetune_budget.SHORT_STEPS, 5,000; 1,000 before it was measured)")
    p.add_argument("--fixed-recipe", action="store_true",
                   help="use the preset's recipe as written, not scaled to the run")
    p.add_argument("--head-init", choices=("auto", "probe", "small"), default="auto",
                   help="probe: fit the head as a linear probe on the frozen features of the "
                   "labelled images first (LP-FT); small: the release's head x0.001; auto: "
                   "probe for a pre-trained encoder with at most 1,000 labelled images per "
                   "class and a pooled head, else small (keras_conmim.finetune_budget."
                   "head_init; the flatten head measured better small)")
    p.add_argument("--probe-weight-decay", type=probe_weight_decay, default="cv",
                   help="the LP-FT probe's weight decay: cv (picked by 4-fold cross-validation "
                   "on the labelled images, keras_conmim.evaluation.select_weight_decay) or a "
                   "number >= 0")
    # The recipe: None = the preset's fine-tuning recipe (presets.py), printed
    # with where each value came from.
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--steps-per-epoch", type=int, default=None, help="default: one pass")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--min-lr", type=float, default=None)
    p.add_argument("--warmup-epochs", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--layer-decay", type=float, default=None)
    p.add_argument("--drop-path", type=float, default=None)
    p.add_argument("--label-smoothing", type=float, default=None)
    p.add_argument("--mixup", type=float, default=None, help="MixUp alpha (0: off)")
    p.add_argument("--cutmix", type=float, default=None, help="CutMix factor (0: off)")
    p.add_argument("--randaugment-ops", type=int, default=None, help="0: off")
    p.add_argument("--randaugment-factor", type=float, default=None)
    p.add_argument("--random-erasing", type=float, default=None,
                   help="probability of erasing a random rectangle of each image (0: off)")
    p.add_argument("--crop", choices=CROPS, default=None,
                   help="train-time crop: pad (a random window of the image zero-padded by "
                   "--crop-padding px), resized (random resized crop, area --crop-scale-min to "
                   "1), none; auto: the release's rule, pad at 32 px or less, else resized "
                   "(then test images are center-cropped at 0.875)")
    p.add_argument("--crop-padding", type=int, default=None, help="pixels, for --crop pad")
    p.add_argument("--crop-scale-min", type=float, default=None,
                   help="smallest crop area, for --crop resized")
    p.add_argument("--flip", type=float, default=None,
                   help="horizontal flip probability at train time (0: off)")
    p.add_argument("--pooling", choices=keras_free_module("presets.py").POOLINGS,
                   default=None,
                   help="what the head sees: mean of the patch tokens (the release), the CLS "
                   "token, the patch tokens flattened in grid order (keeps where each "
                   "patch is), or the mean and the flattened tokens concatenated")
    p.add_argument("--output", default=os.path.join(ROOT, "saved_models", "classifier.keras"))
    p.add_argument("--checkpoint-dir", default=None,
                   help="where each epoch's checkpoint goes (default: --output without .keras, "
                   "plus .checkpoints); removed once the run has saved --output")
    p.add_argument("--jit-compile", choices=("auto", "on", "off"), default="auto",
                   help="compile the step (XLA on JAX / TensorFlow, torch.compile on torch); "
                   "auto: XLA on JAX, and on TensorFlow and torch only with a GPU")
    p.add_argument("--no-resume", action="store_true",
                   help="start over even if --checkpoint-dir holds a checkpoint of this run")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.preset is not None and args.preset not in _presets():
        p.error(f"--preset {args.preset!r}: choose one of {', '.join(_presets())}")
    for name in ("epochs", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.labels_per_class is not None and args.labels_per_class < 1:
        p.error("--labels-per-class must be >= 1")
    if args.min_steps is not None and args.min_steps < 0:
        p.error("--min-steps must be >= 0")
    if args.ramp_start_steps is not None:
        try:
            keras_free_module("finetune_budget.py").check_ramp_start(args.ramp_start_steps)
        except ValueError as err:
            p.error(f"--ramp-start-steps {args.ramp_start_steps}: {err}")
    if args.lr is not None and args.lr <= 0:
        p.error("--lr must be > 0")
    if args.random_erasing is not None and not 0 <= args.random_erasing <= 1:
        p.error(f"--random-erasing {args.random_erasing}: a probability, in [0, 1]")
    if args.layer_decay is not None and not 0 < args.layer_decay <= 1:
        p.error(f"--layer-decay {args.layer_decay}: must be in (0, 1]")
    try:
        check_geometry(padding=4 if args.crop_padding is None else args.crop_padding,
                       scale_min=0.08 if args.crop_scale_min is None else args.crop_scale_min,
                       flip=0.5 if args.flip is None else args.flip)
    except ValueError as e:
        p.error(str(e))
    if not args.output.endswith(".keras"):
        p.error(f"--output {args.output}: must end in .keras")
    if args.checkpoint_dir is None:
        args.checkpoint_dir = args.output[:-len(".keras")] + ".checkpoints"
    if not args.from_scratch and not os.path.isfile(args.encoder):
        p.error(f"--encoder {args.encoder}: file not found. Pre-train first "
                "(python recipes/pretrain.py) or pass --from-scratch.")
    if args.from_scratch and not args.preset and not os.path.isfile(args.encoder):
        p.error("--from-scratch needs --preset, or an --encoder file to copy the architecture from")
    return args


FINETUNE_KEYS = ("epochs", "batch_size", "lr", "min_lr", "warmup_epochs", "weight_decay",
                 "layer_decay", "drop_path", "label_smoothing", "mixup", "cutmix",
                 "randaugment_ops", "randaugment_factor", "random_erasing", "crop",
                 "crop_padding", "crop_scale_min", "flip", "pooling")


ARCHITECTURE_KEYS = ("image_shape", "patch_size", "num_layers", "num_heads", "hidden_dim")


def preset_for(encoder_config):
    """The preset whose architecture the encoder has, or None."""
    for name, preset in _presets().items():
        if all(tuple(_as_tuple(encoder_config.get(k))) == tuple(_as_tuple(preset["config"][k]))
               for k in ARCHITECTURE_KEYS):
            return name
    return None


def _as_tuple(value):
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def recipe_for(args, preset):
    """(preset name, recipe dict) the run starts from: `preset`'s
    `"scratch"` recipe with --from-scratch, else its `"finetune"` one; the
    small-image recipes when the architecture is no preset's."""
    presets = _presets()
    name = preset if preset in presets else "vit_mini_p4_28"
    return name, presets[name]["scratch" if args.from_scratch else "finetune"]


def apply_recipe(args, preset, num_labelled=None):
    """Fill every recipe value the flags left unset from `preset`'s recipe
    (`"scratch"` with --from-scratch, else `"finetune"`; the small-image
    recipes when the architecture is no preset's), scaled to a run on
    `num_labelled` images unless --fixed-recipe. Returns the printable
    description, a line per value with its source."""
    from keras_conmim.finetune_budget import MIN_STEPS, SHORT_STEPS, budget_recipe

    name, recipe = recipe_for(args, preset)
    given = {key for key in FINETUNE_KEYS if getattr(args, key) is not None}
    values = {key: getattr(args, key) if key in given else recipe[key] for key in FINETUNE_KEYS}
    changes = {}
    if num_labelled is not None and not args.fixed_recipe:
        min_steps = MIN_STEPS if args.min_steps is None else args.min_steps
        try:
            values, changes = budget_recipe(
                values, num_labelled, fixed=given, min_steps=min_steps,
                steps_per_epoch=args.steps_per_epoch,
                ramp_start=SHORT_STEPS if args.ramp_start_steps is None else args.ramp_start_steps)
        except ValueError as e:
            raise SystemExit(f"error: {e}")
    label = "from-scratch" if args.from_scratch else "fine-tuning"
    lines = [f"{label} recipe ({preset or 'no preset matches the encoder: ' + name + ' values'}"
             f"{', as written' if args.fixed_recipe else ''}):"]
    for key in FINETUNE_KEYS:
        setattr(args, key, values[key])
        source = ("   <- flag" if key in given and key not in changes else
                  f"   <- scaled: {changes[key]} (recipe {recipe[key]})" if key in changes else "")
        lines.append(f"  {key:<20} {values[key]}{source}")
    return "\n".join(lines)


RUN_FILE = "run.json"
# Settings added after run files were first written, with the value a run
# file without them was made with.
ADDED_SINCE = {"random_erasing": 0.0, "crop": "none", "crop_padding": 0, "crop_scale_min": 1.0,
               "flip": 0.0, "pooling": "mean"}


def run_settings(args):
    """What a checkpoint must have been made with to be resumed: the start,
    the data, the label subset and the resolved recipe."""
    keys = ("from_scratch", "preset", "data", "labels_per_class", "seed", "steps_per_epoch",
            "head_init", "probe_weight_decay", *FINETUNE_KEYS)
    settings = {key: getattr(args, key) for key in keys}
    settings["encoder"] = None if args.from_scratch and args.preset else os.path.abspath(args.encoder)
    return settings


def resumable(args, settings):
    """The settings file of the checkpoints in --checkpoint-dir when this run
    resumes them, else None (no checkpoint, or --no-resume: they are
    removed). Exits with a clear error when they belong to another run."""
    import json

    from keras_conmim.callbacks import list_checkpoints

    folder = args.checkpoint_dir
    if not list_checkpoints(folder):
        return None
    if args.no_resume:
        remove_checkpoints(folder)
        return None
    path = os.path.join(folder, RUN_FILE)
    saved = {}
    if os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
    previous = {**ADDED_SINCE, **saved.get("settings", {})}
    differ = [f"{k}: {previous.get(k)!r} there, {v!r} here"
              for k, v in settings.items() if previous.get(k) != v]
    if differ:
        raise SystemExit(f"error: --checkpoint-dir {folder} holds checkpoints of another run ("
                         + "; ".join(differ) + "). Pass --no-resume to start over, or another "
                         "--checkpoint-dir.")
    return saved


def remove_checkpoints(folder):
    """Delete this recipe's files in `folder` (checkpoints, run.json), then the
    folder if that left it empty; nothing else in it is touched."""
    from keras_conmim.callbacks import list_checkpoints

    for path in [*list_checkpoints(folder), os.path.join(folder, RUN_FILE)]:
        if os.path.exists(path):
            os.remove(path)
    if os.path.isdir(folder) and not os.listdir(folder):
        os.rmdir(folder)


def write_run_file(folder, settings, head):
    """The run's settings and head line, beside its checkpoints (atomically)."""
    import json

    from keras_conmim.saving import write_text_atomic

    write_text_atomic(os.path.join(folder, RUN_FILE),
                      json.dumps({"settings": settings, "head": head}, indent=2))


def load_splits(spec, image_shape, resize="crop", crop="none"):
    """(train, test) sources at the model's size. With `crop` "auto" or
    "resized" above 32 px the test images are loaded at size / 0.875 and
    center-cropped, as the release evaluates (`data.geometry`)."""
    from keras_conmim import data
    from keras_conmim.data.geometry import eval_center_crop, eval_load_size

    h, w, c = image_shape
    test_size = eval_load_size((h, w), crop)
    try:
        train, test = data.load_splits(spec, (h, w), test_size, resize=resize,
                                       channels="rgb" if c == 3 else "gray")
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    if test_size != (h, w):
        test = data.from_arrays(eval_center_crop(test.images, (h, w)), test.labels)
    return train, test


GEOMETRY_STREAM = 1  # keeps the crop draws apart from the data order's (seed, epoch)


def make_batches(source, num_classes, args, first_step=0, steps_per_epoch=None):
    """Endless augmented batches: (float images in [0, 255], soft labels).
    Batch k of the run holds `source.batch_indices(..., first_step + k)`, so a
    resumed run reads the images the stopped one would have read next (the
    random augmentation draws are new)."""
    import keras
    import numpy as np

    from keras_conmim.data.geometry import train_geometry

    def images_of(step):
        """uint8 batch `step`, cropped and flipped by a draw of (seed, step)
        alone (the release's train-time geometry, `data.geometry`)."""
        idx = source.batch_indices(args.batch_size, args.seed, int(step))
        rng = np.random.default_rng((args.seed, GEOMETRY_STREAM, int(step)))
        images = train_geometry(source.batch(idx), rng, args.crop, args.crop_padding,
                                args.crop_scale_min, args.flip)
        return images, source.labels[idx].astype("int64")

    augment = (keras.layers.RandAugment(value_range=(0, 255), num_ops=args.randaugment_ops,
                                        factor=args.randaugment_factor, seed=args.seed)
               if args.randaugment_ops > 0 else None)
    # The release's random erasing (timm's, after RandAugment, before mixing):
    # a rectangle of 2-33% of the image, filled with mid-grey (timm fills with
    # per-pixel noise; Keras' layer offers a constant or clipped noise).
    erase = (keras.layers.RandomErasing(factor=(args.random_erasing, args.random_erasing),
                                        scale=(0.02, 1 / 3), fill_value=127.5,
                                        value_range=(0, 255), seed=args.seed)
             if args.random_erasing > 0 else None)
    mixers = [m for m in (keras.layers.MixUp(alpha=args.mixup, seed=args.seed) if args.mixup > 0 else None,
                          keras.layers.CutMix(factor=args.cutmix, seed=args.seed) if args.cutmix > 0 else None)
              if m is not None]
    def augment_and_mix(x, y, choose):
        """RandAugment, random erasing, then one of the mixers; `choose(branches)`
        runs one."""
        if augment is not None:
            x = augment(x, training=True)
        if erase is not None:
            x = erase(x, training=True)
        if mixers:
            mixed = choose([lambda m=m: m({"images": x, "labels": y}, training=True)
                            for m in mixers])
            x, y = mixed["images"], mixed["labels"]
        return x, y

    try:
        import tensorflow as tf
    except ImportError:
        tf = None
    if tf is not None:
        # Keras preprocessing layers run as TF graph ops inside tf.data,
        # whatever the backend: parallel and far faster than eager JAX ops.
        def graph_choice(branches):
            if len(branches) == 1:
                return branches[0]()
            return tf.cond(tf.random.uniform(()) < 0.5, branches[0], branches[1])

        def batch(step):
            images, labels = tf.numpy_function(images_of, [step], (tf.uint8, tf.int64))
            x = tf.cast(tf.reshape(images, (args.batch_size, *source.images.shape[1:])),
                        "float32")
            y = tf.one_hot(tf.reshape(labels, (args.batch_size,)), num_classes)
            return augment_and_mix(x, y, graph_choice)

        return (tf.data.Dataset.counter(start=first_step)
                .map(batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(4))

    rng = np.random.default_rng(args.seed + first_step)
    steps = steps_per_epoch or source.steps_per_epoch(args.batch_size)

    class Batches(keras.utils.PyDataset):
        """Without TensorFlow: epoch e's batch i is global step
        first_step + e * steps + i (fit() calls on_epoch_end between epochs)."""

        epoch = 0

        def __len__(self):
            return steps

        def on_epoch_end(self):
            self.epoch += 1

        def __getitem__(self, i):
            images, labels = images_of(first_step + self.epoch * steps + i)
            x = keras.ops.convert_to_tensor(images.astype("float32"))
            y = keras.ops.one_hot(keras.ops.convert_to_tensor(labels), num_classes)
            return augment_and_mix(x, y, lambda branches: branches[rng.integers(len(branches))]())

    return Batches()


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    sys.path.insert(0, ROOT)
    import keras
    import numpy as np

    import keras_conmim as kc
    from keras_conmim.callbacks import Checkpointer, restore_latest_checkpoint
    from keras_conmim.classifier import ViTClassifier, finetune_encoder
    from keras_conmim.saving import load_encoder, save_atomic

    keras.utils.set_random_seed(args.seed)
    if args.from_scratch:
        if args.preset:
            encoder = kc.ViT.from_preset(args.preset)
        else:  # same architecture as the pre-trained file, fresh weights
            config = load_encoder(args.encoder).get_config()
            encoder = kc.ViT.from_config({**config, "name": "vit"})
    else:
        encoder = load_encoder(args.encoder)
    preset = args.preset or preset_for(encoder.get_config())
    train, test = load_splits(args.data, encoder.image_shape,
                              crop=args.crop or recipe_for(args, preset)[1]["crop"])
    if args.labels_per_class is not None:
        try:
            train = train.labelled_subset(args.labels_per_class, seed=args.seed)
        except ValueError as e:
            raise SystemExit(f"error: --labels-per-class: {e}")
    print(apply_recipe(args, preset, len(train)),
          flush=True)
    settings = run_settings(args)
    resumed = resumable(args, settings)
    encoder = finetune_encoder(encoder, drop_path_rate=args.drop_path)
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    model = ViTClassifier(encoder, num_classes, pooling=args.pooling)
    from keras_conmim import finetune_budget

    head_init = args.head_init if args.head_init != "auto" else finetune_budget.head_init(
        not args.from_scratch, len(train), num_classes, args.pooling)
    if resumed is not None:
        head = resumed["head"]  # the checkpoint holds the head; no probe to fit again
    elif head_init == "probe":
        accuracy, weight_decay = model.init_head_from_probe(
            train.images, train.labels, weight_decay=args.probe_weight_decay, seed=args.seed)
        how = "by cross-validation" if args.probe_weight_decay == "cv" else "<- flag"
        head = (f"linear probe on the frozen features of the {len(train)} labelled images "
                f"(LP-FT, weight decay {weight_decay:g} {how}), train accuracy "
                f"{100 * accuracy:.2f}%")
    else:
        head = "initialised x0.001 (the release's)"
    print(f"head: {head}", flush=True)

    steps = args.steps_per_epoch or train.steps_per_epoch(args.batch_size)
    total = steps * args.epochs
    warmup = min(int(args.warmup_epochs * steps), total - 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else args.lr, decay_steps=total - warmup, alpha=args.min_lr / args.lr,
        warmup_target=args.lr if warmup else None, warmup_steps=warmup)
    optimizer = kc.LayerDecayAdamW(
        lr_scales=kc.layer_decay_scales(encoder, args.layer_decay), learning_rate=schedule,
        weight_decay=args.weight_decay, beta_1=0.9, beta_2=0.999)
    optimizer.exclude_from_weight_decay(var_list=model.no_weight_decay_variables())
    model.compile(optimizer=optimizer,
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True,
                                                            label_smoothing=args.label_smoothing),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
                  jit_compile=kc.train_step.jit_compile_for(args.jit_compile))
    start = "random init" if args.from_scratch else args.encoder
    print(f"fine-tuning from {start}: backend={args.backend} train={len(train)}"
          f"{'' if args.labels_per_class is None else f' ({args.labels_per_class} per class)'} "
          f"test={len(test)} "
          f"classes={num_classes} epochs={args.epochs} steps/epoch={steps}", flush=True)
    first_epoch = 0
    if resumed is not None:
        model(np.zeros((1, *encoder.image_shape), "float32"))
        model.optimizer.build(model.trainable_variables)
        path = restore_latest_checkpoint(model, args.checkpoint_dir)
        if path is None:
            raise SystemExit(f"error: no checkpoint in {args.checkpoint_dir} loads; pass "
                             "--no-resume to start over.")
        first_epoch = min(int(keras.ops.convert_to_numpy(model.optimizer.iterations)) // steps,
                          args.epochs)
        print(f"resumed from {path}: {first_epoch} of {args.epochs} epochs done", flush=True)
    else:
        write_run_file(args.checkpoint_dir, settings, head)
    model.fit(make_batches(train, num_classes, args, first_step=first_epoch * steps,
                           steps_per_epoch=steps),
              epochs=args.epochs, initial_epoch=first_epoch, steps_per_epoch=steps, verbose=1,
              callbacks=[Checkpointer(args.checkpoint_dir, keep=2)])
    logits = model.predict(test.images.astype("float32"), batch_size=256, verbose=0)
    top1 = float(np.mean(np.argmax(logits, 1) == test.labels))
    save_atomic(model, args.output)
    remove_checkpoints(args.checkpoint_dir)  # the run is whole in --output
    print(f"done: test top-1 {100 * top1:.2f}% on {len(test)} images, saved to {args.output}")
    return top1


if __name__ == "__main__":
    main()
