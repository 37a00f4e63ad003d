"""A fine-tuning run's parts, under `recipes/finetune.py`: the recipe a run
starts from and its scaling to the run (`resolve_recipe`, through
`run_config`, the resolver every recipe uses; the result is a typed
`FinetuneRecipe`), the run's bookkeeping for exact resume (`run_settings`,
`check_resume`, the run file `config.json` beside the checkpoints, in
`run_folder`'s one format), the splits at the model's size (`load_splits`)
and the augmented batches (`make_batches`: the release's crop + flip on
uint8, then RandAugment, random erasing and MixUp / CutMix as Keras
preprocessing layers, in tf.data when TensorFlow is installed, else per
batch). Errors are `ConfigError` / `ResumeError` / `DataError`.
"""

import dataclasses
import json
import os

import keras
import numpy as np

from keras_conmim import data, run_folder
from keras_conmim.atomic import write_text_atomic
from keras_conmim.callbacks import list_checkpoints
from keras_conmim.cli import encoder_path
from keras_conmim.data.geometry import (
    check_geometry, eval_center_crop, eval_load_size, train_geometry,
)
from keras_conmim.data.step_batches import StepBatches
from keras_conmim.errors import ConfigError, DataError, ResumeError
from keras_conmim.finetune_budget import MIN_STEPS, SHORT_STEPS, budget_recipe
from keras_conmim.presets import POOLINGS, PRESETS
from keras_conmim.run_config import describe, resolve


@dataclasses.dataclass(frozen=True)
class FinetuneRecipe:
    """The values a fine-tuning (or from-scratch) run trains with, resolved
    once (`resolve_recipe`). The defaults switch every augmentation off;
    the presets' recipes (`PRESETS[name]["finetune"]` / `["scratch"]`) set
    them all."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_epochs: float = 0.0
    weight_decay: float = 0.05
    layer_decay: float = 1.0
    drop_path: float = 0.0
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    randaugment_ops: int = 0
    randaugment_factor: float = 0.0
    random_erasing: float = 0.0
    crop: str = "none"
    crop_padding: int = 0
    crop_scale_min: float = 1.0
    flip: float = 0.0
    pooling: str = "mean"

    def __post_init__(self):
        errors = [f"{k}={getattr(self, k)!r}: must be an integer >= 1"
                  for k in ("epochs", "batch_size") if not getattr(self, k) >= 1]
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
            errors.append(f"lr={self.lr}, min_lr={self.min_lr}: need 0 <= min_lr <= lr, lr > 0")
        if not 0 < self.layer_decay <= 1:
            errors.append(f"layer_decay={self.layer_decay}: must be in (0, 1]")
        for k in ("random_erasing", "drop_path", "label_smoothing"):
            if not 0 <= getattr(self, k) <= 1:
                errors.append(f"{k}={getattr(self, k)}: must be in [0, 1]")
        for k in ("warmup_epochs", "weight_decay", "mixup", "cutmix", "randaugment_ops",
                  "randaugment_factor"):
            if getattr(self, k) < 0:
                errors.append(f"{k}={getattr(self, k)}: must be >= 0")
        try:
            check_geometry(self.crop, self.crop_padding, self.crop_scale_min, self.flip)
        except ValueError as e:
            errors.append(str(e))
        if self.pooling not in POOLINGS:
            errors.append(f"pooling={self.pooling!r}: choose one of {', '.join(POOLINGS)}")
        if errors:
            raise ConfigError("invalid fine-tuning recipe:\n  " + "\n  ".join(errors))

    def as_dict(self):
        return dataclasses.asdict(self)


FINETUNE_KEYS = tuple(f.name for f in dataclasses.fields(FinetuneRecipe))
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


def recipe_for(from_scratch, preset):
    """(preset name, recipe dict) the run starts from: `preset`'s
    `"scratch"` recipe when `from_scratch`, else its `"finetune"` one; the
    small-image recipes when the architecture is no preset's."""
    name = preset if preset in PRESETS else "vit_mini_p4_28"
    return name, PRESETS[name]["scratch" if from_scratch else "finetune"]


def resolve_recipe(preset, from_scratch=False, flags=None, from_file=None, num_labelled=None,
                   fixed=False, min_steps=None, steps_per_epoch=None, ramp_start=None):
    """`(FinetuneRecipe, sources, text)`: the preset's recipe (`"scratch"`
    when `from_scratch`, else `"finetune"`; the small-image recipes when the
    architecture is no preset's) < a config file's values (`from_file`) <
    `flags`, then scaled to a run on `num_labelled` images unless `fixed`
    (`finetune_budget.budget_recipe`; a given value is never scaled).
    `sources[key]`: "preset", "file", "flag" or "scaled: <rule> (recipe
    <value>)"; `text` prints every value with its source."""
    flags = {k: v for k, v in (flags or {}).items() if k in FINETUNE_KEYS and v is not None}
    from_file = {k: v for k, v in (from_file or {}).items() if k in FINETUNE_KEYS}
    name, recipe = recipe_for(from_scratch, preset)
    values, sources = resolve(FINETUNE_KEYS, recipe, from_file, flags)
    if num_labelled is not None and not fixed:
        try:
            scaled, changes = budget_recipe(
                values, num_labelled, fixed=set(flags) | set(from_file),
                min_steps=MIN_STEPS if min_steps is None else min_steps,
                steps_per_epoch=steps_per_epoch,
                ramp_start=SHORT_STEPS if ramp_start is None else ramp_start)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        for key, rule in changes.items():
            sources[key] = f"scaled: {rule} (recipe {recipe[key]})"
        values = scaled
    label = "from-scratch" if from_scratch else "fine-tuning"
    title = (f"{label} recipe ({preset or 'no preset matches the encoder: ' + name + ' values'}"
             f"{', as written' if fixed else ''}):")
    return FinetuneRecipe(**values), sources, describe(title, values, sources, FINETUNE_KEYS)


# Settings added after run files were first written, with the value a run
# file without them was made with.
ADDED_SINCE = {"random_erasing": 0.0, "crop": "none", "crop_padding": 0, "crop_scale_min": 1.0,
               "flip": 0.0, "pooling": "mean", "test_data": None}
LEGACY_RUN_FILE = "run.json"  # the run file before config.json: {"settings", "head"}


def run_settings(args, recipe):
    """What a checkpoint must have been made with to be resumed: the start,
    the data, the label subset and the resolved recipe."""
    keys = ("from_scratch", "preset", "data", "test_data", "labels_per_class", "seed", "steps_per_epoch",
            "head_init", "probe_weight_decay")
    settings = {key: getattr(args, key) for key in keys}
    settings["encoder"] = None if args.from_scratch and args.preset else encoder_path(args.encoder)
    settings.update(recipe.as_dict())
    return settings


def _saved_settings(folder):
    """The run file beside the checkpoints in `folder` (config.json, or an
    older version's run.json, read into the same form), or None."""
    saved = run_folder.read_config(folder)
    if saved is not None:
        return saved
    path = os.path.join(folder, LEGACY_RUN_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        legacy = json.load(f)
    return {**ADDED_SINCE, **legacy.get("settings", {}), "head": legacy.get("head")}


def check_resume(folder, settings, no_resume=False):
    """The run file of the checkpoints in `folder` when this run resumes them,
    else None (no checkpoint, or `no_resume`: they are removed). A run file
    made with other settings is a ResumeError naming each difference
    (`run_folder.resume_problems`, the check the pre-training recipe uses)."""
    if not list_checkpoints(folder):
        return None
    if no_resume:
        remove_checkpoints(folder)
        return None
    saved = _saved_settings(folder)
    if saved is None:
        saved = dict(ADDED_SINCE)  # checkpoints without a run file: compare what can be
    problems = run_folder.resume_problems(saved, settings, mutable=())
    if problems:
        raise ResumeError(f"{folder} holds checkpoints of another run:\n  "
                          + "\n  ".join(problems) + "\nPass --no-resume to start over, or "
                          "another --checkpoint-dir.")
    return saved


def remove_checkpoints(folder):
    """Delete this recipe's files in `folder` (checkpoints, its run file),
    then the folder if that left it empty; nothing else in it is touched."""
    for path in [*list_checkpoints(folder), os.path.join(folder, run_folder.CONFIG),
                 os.path.join(folder, LEGACY_RUN_FILE)]:
        if os.path.exists(path):
            os.remove(path)
    if os.path.isdir(folder) and not os.listdir(folder):
        os.rmdir(folder)


def write_run_file(folder, settings, sources, head, saved=None, step=0):
    """The run's settings, where the recipe values came from, its head line
    and the history of starts and resumes, beside its checkpoints
    (`run_folder.record`, the format of the pre-training run's config.json)."""
    os.makedirs(folder, exist_ok=True)
    write_text_atomic(os.path.join(folder, run_folder.CONFIG), run_folder.record(
        settings, sources, saved, "resume" if saved else "start", step, extra={"head": head}))


def load_splits(spec, image_shape, resize="crop", crop="none", test_spec=None, seed=0):
    """`data.labelled.LabelledSplits` at the model's size: `--data` /
    `--test-data` (`data.labelled.load_labelled`: class names, where the test
    images came from, what was skipped), channels converted to the model's.
    With `crop` "auto" or "resized" above 32 px the test images are loaded at
    size / 0.875 and center-cropped, as the release evaluates
    (`data.geometry`). A spec that cannot work is a `DataError`."""
    from keras_conmim.data.labelled import load_labelled

    h, w, c = image_shape
    test_size = eval_load_size((h, w), crop)
    try:
        splits = load_labelled(spec, test_spec, (h, w), test_size, seed=seed, resize=resize,
                               channels="rgb" if c == 3 else "gray")
    except ValueError as e:  # it names the flag and spec at fault
        raise DataError(str(e)) from None
    if test_size != (h, w):
        names = splits.test.class_names
        splits.test = data.from_arrays(eval_center_crop(splits.test.images, (h, w)),
                                       splits.test.labels)
        splits.test.class_names = names
    return splits


GEOMETRY_STREAM = 1  # keeps the crop draws apart from the data order's (seed, epoch)


def make_batches(source, num_classes, recipe, seed=0, first_step=0, steps_per_epoch=None):
    """Endless augmented batches of a `FinetuneRecipe`: (float images in
    [0, 255], soft labels). Batch k of the run holds
    `source.batch_indices(..., first_step + k)`, so a resumed run reads the
    images the stopped one would have read next (the random augmentation
    draws are new)."""

    def images_of(step):
        """uint8 batch `step`, cropped and flipped by a draw of (seed, step)
        alone (the release's train-time geometry, `data.geometry`)."""
        idx = source.batch_indices(recipe.batch_size, seed, int(step))
        rng = np.random.default_rng((seed, GEOMETRY_STREAM, int(step)))
        images = train_geometry(source.batch(idx), rng, recipe.crop, recipe.crop_padding,
                                recipe.crop_scale_min, recipe.flip)
        return images, source.labels[idx].astype("int64")

    augment = (keras.layers.RandAugment(value_range=(0, 255), num_ops=recipe.randaugment_ops,
                                        factor=recipe.randaugment_factor, seed=seed)
               if recipe.randaugment_ops > 0 else None)
    # The release's random erasing (timm's, after RandAugment, before mixing):
    # a rectangle of 2-33% of the image, filled with mid-grey (timm fills with
    # per-pixel noise; Keras' layer offers a constant or clipped noise).
    erase = (keras.layers.RandomErasing(factor=(recipe.random_erasing, recipe.random_erasing),
                                        scale=(0.02, 1 / 3), fill_value=127.5,
                                        value_range=(0, 255), seed=seed)
             if recipe.random_erasing > 0 else None)
    mixers = [m for m in (keras.layers.MixUp(alpha=recipe.mixup, seed=seed) if recipe.mixup > 0 else None,
                          keras.layers.CutMix(factor=recipe.cutmix, seed=seed) if recipe.cutmix > 0 else None)
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
            x = tf.cast(tf.reshape(images, (recipe.batch_size, *source.images.shape[1:])),
                        "float32")
            y = tf.one_hot(tf.reshape(labels, (recipe.batch_size,)), num_classes)
            return augment_and_mix(x, y, graph_choice)

        return (tf.data.Dataset.counter(start=first_step)
                .map(batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(4))

    steps = steps_per_epoch or source.steps_per_epoch(recipe.batch_size)

    def batch(step):
        """Without TensorFlow: global step `step`'s batch, augmented here (the
        mixing branch drawn by (seed, step), so a resumed run draws the same)."""
        images, labels = images_of(step)
        x = keras.ops.convert_to_tensor(images.astype("float32"))
        y = keras.ops.one_hot(keras.ops.convert_to_tensor(labels), num_classes)
        rng = np.random.default_rng((seed, 5, int(step)))
        return augment_and_mix(x, y, lambda branches: branches[rng.integers(len(branches))]())

    return StepBatches(batch, first_step, steps)


def write_results(path, result, recipe, sources, command):
    """--results-json: the run's `result` with its resolved recipe, each
    value's source and the command (what benchmarks read)."""
    result.update(recipe=recipe.as_dict(), recipe_sources=sources, epochs=recipe.epochs,
                  command=command)
    write_text_atomic(path, json.dumps(result, indent=2))
