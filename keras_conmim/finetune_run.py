"""A fine-tuning run's parts, under `recipes/finetune.py`: the recipe a run
starts from and its scaling to the run (`apply_recipe`), the run's
bookkeeping for exact resume (`run_settings`, `resumable`, the run file
beside the checkpoints), the splits at the model's size (`load_splits`) and
the augmented batches (`make_batches`: the release's crop + flip on uint8,
then RandAugment, random erasing and MixUp / CutMix as Keras preprocessing
layers, in tf.data when TensorFlow is installed, else per batch).

Keras-free at import; functions that need Keras import it when called.
`args` is the recipe's parsed flags (any object with those attributes).
"""

import os

from keras_conmim.cli import encoder_path
from keras_conmim.presets import PRESETS

FINETUNE_KEYS = ("epochs", "batch_size", "lr", "min_lr", "warmup_epochs", "weight_decay",
                 "layer_decay", "drop_path", "label_smoothing", "mixup", "cutmix",
                 "randaugment_ops", "randaugment_factor", "random_erasing", "crop",
                 "crop_padding", "crop_scale_min", "flip", "pooling")


ARCHITECTURE_KEYS = ("image_shape", "patch_size", "num_layers", "num_heads", "hidden_dim")


def preset_for(encoder_config):
    """The preset whose architecture the encoder has, or None."""
    for name, preset in PRESETS.items():
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
    name = preset if preset in PRESETS else "vit_mini_p4_28"
    return name, PRESETS[name]["scratch" if args.from_scratch else "finetune"]


def apply_recipe(args, preset, num_labelled=None):
    """Fill every recipe value the flags left unset from `preset`'s recipe
    (`"scratch"` with --from-scratch, else `"finetune"`; the small-image
    recipes when the architecture is no preset's), scaled to a run on
    `num_labelled` images unless --fixed-recipe. Returns the printable
    description, a line per value with its source; `args.recipe_sources` gets
    each value's source too."""
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
    args.recipe_sources = {}  # key -> "recipe", "flag" or "scaled: <rule> (recipe <value>)"
    for key in FINETUNE_KEYS:
        setattr(args, key, values[key])
        source = ("flag" if key in given and key not in changes else
                  f"scaled: {changes[key]} (recipe {recipe[key]})" if key in changes else "recipe")
        args.recipe_sources[key] = source
        lines.append(f"  {key:<20} {values[key]}" + ("" if source == "recipe" else f"   <- {source}"))
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
    settings["encoder"] = None if args.from_scratch and args.preset else encoder_path(args.encoder)
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


def write_results(args, result, command):
    """--results-json: the run's `result` with its resolved recipe, each
    value's source and the command (what benchmarks read)."""
    import json

    from keras_conmim.saving import write_text_atomic

    result.update(recipe={k: getattr(args, k) for k in FINETUNE_KEYS},
                  recipe_sources=getattr(args, "recipe_sources", {}), epochs=args.epochs,
                  command=command)
    write_text_atomic(args.results_json, json.dumps(result, indent=2))
