"""A fine-tuning run's parts, under `recipes/finetune.py`: the recipe a run
starts from and its scaling to the run (`resolve_recipe`, through
`runs.config`, the resolver every recipe uses; the result is a typed
`FinetuneRecipe`), the run's bookkeeping for exact resume (`run_settings`,
`older_run_problems`, the engine's extra resume rule for run files written
before a setting existed), the splits at the model's size (`load_splits`)
and the augmented batches (`make_batches`: the release's crop + flip on
uint8, then RandAugment, random erasing and MixUp / CutMix as Keras
preprocessing layers, in tf.data when TensorFlow is installed, else per
batch). Errors are `ConfigError` / `ResumeError` / `DataError`.
"""

import dataclasses
import json

import keras
import numpy as np

from keras_conmim import data
from keras_conmim.runs import folder as run_folder
from keras_conmim.atomic import write_text_atomic
from keras_conmim.runs.cli import encoder_path
from keras_conmim.data.geometry import (
    CROPS, check_geometry, eval_center_crop, eval_load_size, train_geometry,
)
from keras_conmim.data.step_batches import StepBatches
from keras_conmim.errors import ConfigError, DataError
from keras_conmim.downstream.finetune_budget import MIN_STEPS, SHORT_STEPS, budget_recipe
from keras_conmim.presets import POOLINGS, PRESETS
from keras_conmim.runs.config import describe, resolve


def _field(default, help=None, **meta):
    return dataclasses.field(default=default, metadata=dict(meta, help=help))


@dataclasses.dataclass(frozen=True)
class FinetuneRecipe:
    """The values a fine-tuning (or from-scratch) run trains with, resolved
    once (`resolve_recipe`); recipes/finetune.py's recipe flags are made from
    these fields (`runs.config.add_recipe_flags`). The defaults switch every
    augmentation off; the presets' recipes (`PRESETS[name]["finetune"]` /
    `["scratch"]`) set them all."""

    epochs: int = _field(10)
    batch_size: int = _field(64)
    lr: float = _field(1e-3)
    min_lr: float = _field(1e-6)
    warmup_epochs: float = _field(0.0)
    weight_decay: float = _field(0.05)
    layer_decay: float = _field(1.0, "layer-wise lr decay of the encoder, in (0, 1] (1: off)")
    drop_path: float = _field(0.0)
    label_smoothing: float = _field(0.0)
    mixup: float = _field(0.0, "MixUp alpha (0: off)")
    cutmix: float = _field(0.0, "CutMix factor (0: off)")
    randaugment_ops: int = _field(0, "0: off")
    randaugment_factor: float = _field(0.0)
    random_erasing: float = _field(
        0.0, "probability of erasing a random rectangle of each image (0: off)")
    crop: str = _field("none", "train-time crop: pad (a random window of the image zero-padded "
                       "by --crop-padding px), resized (random resized crop, area "
                       "--crop-scale-min to 1), none; auto: the release's rule, pad at 32 px "
                       "or less, else resized (then test images are center-cropped at 0.875)",
                       choices=CROPS)
    crop_padding: int = _field(0, "pixels, for --crop pad")
    crop_scale_min: float = _field(1.0, "smallest crop area, for --crop resized")
    flip: float = _field(0.0, "horizontal flip probability at train time (0: off)")
    pooling: str = _field("mean", "what the head sees: mean of the patch tokens (the release), "
                          "the CLS token, the patch tokens flattened in grid order (keeps where "
                          "each patch is), or the mean and the flattened tokens concatenated",
                          choices=POOLINGS)

    def __post_init__(self):
        errors = self.field_errors(self.as_dict())
        if errors:
            raise ConfigError("invalid fine-tuning recipe:\n  " + "\n  ".join(errors))

    @staticmethod
    def field_errors(values):
        """What is wrong with `values` (any subset of the fields): one line each."""
        v = values
        errors = [f"{k}={v[k]!r}: must be an integer >= 1"
                  for k in ("epochs", "batch_size") if k in v and not v[k] >= 1]
        if "lr" in v and not v["lr"] > 0:
            errors.append(f"lr={v['lr']}: must be > 0")
        if "min_lr" in v and not 0 <= v["min_lr"] <= v.get("lr", float("inf")):
            errors.append(f"lr={v.get('lr')}, min_lr={v['min_lr']}: need 0 <= min_lr <= lr")
        if "layer_decay" in v and not 0 < v["layer_decay"] <= 1:
            errors.append(f"layer_decay={v['layer_decay']}: must be in (0, 1]")
        errors += [f"{k}={v[k]}: must be in [0, 1]" for k in
                   ("random_erasing", "drop_path", "label_smoothing") if k in v
                   and not 0 <= v[k] <= 1]
        errors += [f"{k}={v[k]}: must be >= 0" for k in
                   ("warmup_epochs", "weight_decay", "mixup", "cutmix", "randaugment_ops",
                    "randaugment_factor") if k in v and v[k] < 0]
        geometry = {k: v[f"crop_{k}" if k in ("padding", "scale_min") else k]
                    for k in ("crop", "padding", "scale_min", "flip")
                    if (f"crop_{k}" if k in ("padding", "scale_min") else k) in v}
        try:
            check_geometry(**geometry)
        except ValueError as e:
            errors.append(str(e))
        if "pooling" in v and v["pooling"] not in POOLINGS:
            errors.append(f"pooling={v['pooling']!r}: choose one of {', '.join(POOLINGS)}")
        return errors

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


def run_settings(args, recipe):
    """What a checkpoint must have been made with to be resumed: the start,
    the data, the label subset and the resolved recipe."""
    keys = ("from_scratch", "preset", "data", "test_data", "labels_per_class", "seed", "steps_per_epoch",
            "head_init", "probe_weight_decay")
    settings = {key: getattr(args, key) for key in keys}
    settings["encoder"] = None if args.from_scratch and args.preset else encoder_path(args.encoder)
    settings.update(recipe.as_dict())
    return settings


def older_run_problems(saved, settings):
    """The run engine's extra resume rule (`runs.Run(problems=...)`): a run
    file written before a setting existed was made with its `ADDED_SINCE`
    value, so it resumes only where this command has that value."""
    missing = {k: v for k, v in ADDED_SINCE.items() if k not in saved}
    return run_folder.resume_problems(missing, settings, mutable=())


def build_classifier(args, encoder, recipe, train, class_names, resumed=None):
    """`(ViTClassifier, head)`: the encoder with the recipe's drop path, a
    head for `class_names` started as `args.head_init` says (LP-FT fits a
    linear probe on the frozen features of `train`; "small" is the release's
    x0.001), and the line describing that start (a resumed run's from its
    config.json: its checkpoint holds the head)."""
    from keras_conmim.downstream import finetune_budget
    from keras_conmim.downstream.classifier import ViTClassifier, finetune_encoder

    encoder = finetune_encoder(encoder, drop_path_rate=recipe.drop_path)
    model = ViTClassifier(encoder, len(class_names), pooling=recipe.pooling,
                          class_names=class_names)
    head_init = args.head_init if args.head_init != "auto" else finetune_budget.head_init(
        not args.from_scratch, len(train), len(class_names), recipe.pooling)
    if resumed is not None:
        return model, resumed.get("head")
    if head_init != "probe":
        return model, "initialised x0.001 (the release's)"
    accuracy, weight_decay = model.init_head_from_probe(
        train.images, train.labels, weight_decay=args.probe_weight_decay, seed=args.seed)
    how = "by cross-validation" if args.probe_weight_decay == "cv" else "<- flag"
    return model, (f"linear probe on the frozen features of the {len(train)} labelled images "
                   f"(LP-FT, weight decay {weight_decay:g} {how}), train accuracy "
                   f"{100 * accuracy:.2f}%")


def compile_classifier(model, recipe, total_steps, steps_per_epoch, jit_compile="auto"):
    """The release's fine-tuning optimizer (AdamW with layer-wise lr decay,
    warm-up + cosine over `total_steps`) and label-smoothed cross-entropy."""
    from keras_conmim.models.optimizers import LayerDecayAdamW, layer_decay_scales, warmup_cosine
    from keras_conmim.models.train_step import jit_compile_for

    schedule = warmup_cosine(recipe.lr, total_steps, recipe.warmup_epochs * steps_per_epoch,
                             recipe.min_lr)
    optimizer = LayerDecayAdamW(
        lr_scales=layer_decay_scales(model.encoder, recipe.layer_decay), learning_rate=schedule,
        weight_decay=recipe.weight_decay, beta_1=0.9, beta_2=0.999)
    optimizer.exclude_from_weight_decay(var_list=model.no_weight_decay_variables())
    model.compile(optimizer=optimizer,
                  loss=keras.losses.CategoricalCrossentropy(
                      from_logits=True, label_smoothing=recipe.label_smoothing),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
                  jit_compile=jit_compile_for(jit_compile))


def test_top1(model, test):
    logits = model.predict(test.images.astype("float32"), batch_size=256, verbose=0)
    return float(np.mean(np.argmax(logits, 1) == test.labels))


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


def write_results(path, result):
    """--results-json: a copy of the run's results.json where a script wants it."""
    write_text_atomic(path, json.dumps(result, indent=2))
