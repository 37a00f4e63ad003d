"""A downstream run's parts, under `recipes/segment.py` and `recipes/detect.py`:
the recipe (a preset's `"downstream"` data < a `--config` file < flags, through
`runs.config`, typed as `DownstreamRecipe`), the optimizer (AdamW, warmup +
cosine, the heads at `lr`, the encoder at `backbone_lr_scale` of it with
layer-wise decay), the canvases with a validation split carved from the
training items, endless uint8 batches with exact resume (`canvas_batches`),
and the picture grid a run leaves in its folder (`picture_grid`). keras and
numpy only; the heads themselves come from KerasHub / Keras-CV in the recipes.
"""

import dataclasses

import numpy as np

from keras_conmim.downstream.metrics import IGNORE
from keras_conmim.errors import ConfigError, DataError
from keras_conmim.presets import DOWNSTREAM, PRESETS
from keras_conmim.runs.config import describe, resolve

TASKS = ("segment", "detect", "instance")
# Pre-trained encoders start from their weights; the others start from random ones.
INITS = ("pretrained", "random", "resnet18")


@dataclasses.dataclass(frozen=True)
class DownstreamRecipe:
    """The values a segmentation or detection run trains with (see
    `keras_conmim.presets.DOWNSTREAM_RECIPE` for the reasons)."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    backbone_lr_scale: float = 0.2
    layer_decay: float = 0.75
    min_lr: float = 1e-6
    warmup_fraction: float = 0.1
    weight_decay: float = 0.05
    clip_norm: float = 1.0
    drop_path: float = 0.1
    flip: float = 0.5
    canvas_size: int = dataclasses.field(default=48, metadata=dict(
        aliases=("--image-size",), help="the square input size: canvases are made at it, "
        "images of coco: / masks: data letterboxed to it"))
    max_items: int = 2

    def __post_init__(self):
        errors = [f"{k}={getattr(self, k)!r}: must be an integer >= 1"
                  for k in ("steps", "batch_size", "max_items")
                  if not (isinstance(getattr(self, k), int) and getattr(self, k) >= 1)]
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
            errors.append(f"lr={self.lr}, min_lr={self.min_lr}: need 0 <= min_lr <= lr, lr > 0")
        for k in ("backbone_lr_scale", "layer_decay"):
            if not 0 < getattr(self, k) <= 1:
                errors.append(f"{k}={getattr(self, k)}: must be in (0, 1]")
        for k in ("warmup_fraction", "drop_path", "flip"):
            if not 0 <= getattr(self, k) < 1 + (k == "flip"):
                errors.append(f"{k}={getattr(self, k)}: must be in [0, 1{']' if k == 'flip' else ')'}")
        for k in ("weight_decay", "clip_norm"):
            if getattr(self, k) < 0:
                errors.append(f"{k}={getattr(self, k)}: must be >= 0 (0: off)")
        if not isinstance(self.canvas_size, int) or self.canvas_size < 32 or self.canvas_size % 16:
            errors.append(f"canvas_size={self.canvas_size!r}: must be a multiple of 16 (the "
                          "coarsest level the heads read, P4), at least 32")
        if errors:
            raise ConfigError("downstream recipe: " + "; ".join(errors))

    def as_dict(self):
        return dataclasses.asdict(self)


RECIPE_KEYS = tuple(f.name for f in dataclasses.fields(DownstreamRecipe))


def resolve_recipe(task, init, preset=None, flags=None, from_file=None, head_recipe=None):
    """`(DownstreamRecipe, sources, text)` for `task` from `init`: the
    preset's `"downstream"` recipe (the small-image one when the preset has
    none), with its `"scratch"` changes for a start without pre-training and
    `head_recipe` (`{"values": {...}, "why": text}`: what the head needs, such
    as YOLOv8's canvas size), < `from_file` < `flags` (None values ignored)."""
    if task not in TASKS:
        raise ConfigError(f"task {task!r}: choose one of {', '.join(TASKS)}")
    if init not in INITS:
        raise ConfigError(f"--init {init!r}: choose one of {', '.join(INITS)}")
    table = PRESETS.get(preset, {}).get("downstream", DOWNSTREAM)
    recipe = dict(table[task])
    if init != "pretrained":
        recipe.update(table["scratch"])
    head_values = dict((head_recipe or {}).get("values", {}))
    recipe.update(head_values)
    flags = {k: v for k, v in (flags or {}).items() if k in RECIPE_KEYS and v is not None}
    from_file = {k: v for k, v in (from_file or {}).items() if k in RECIPE_KEYS}
    values, sources = resolve(RECIPE_KEYS, recipe, from_file, flags)
    if init != "pretrained":
        for key in table["scratch"]:
            if sources[key] == "preset":
                sources[key] = f"scratch recipe (no pre-training; pre-trained: {table[task][key]})"
    for key in head_values:
        if sources[key] == "preset":
            sources[key] = f"head ({head_recipe['why']}; preset: {table[task][key]})"
    title = (f"{task} recipe ({preset or 'no preset matches the encoder: small-image values'}, "
             f"{init} start):")
    return DownstreamRecipe(**values), sources, describe(title, values, sources, RECIPE_KEYS)


def optimizer_for(recipe, model, encoder=None):
    """AdamW on `model`: warmup over `warmup_fraction` of the steps, cosine to
    `min_lr`; `encoder`'s variables (a `ViT` inside `model`) at
    `backbone_lr_scale` x the layer-wise decay scales, the rest (heads,
    pyramid, a scratch backbone) at `lr`. Biases, norms, tokens and position
    tables get no weight decay."""
    from keras_conmim.models.optimizers import LayerDecayAdamW, layer_decay_scales, warmup_cosine

    schedule = warmup_cosine(recipe.lr, recipe.steps, recipe.warmup_fraction * recipe.steps,
                             recipe.min_lr)
    scales = {}
    if encoder is not None:
        scales = {path: s * recipe.backbone_lr_scale
                  for path, s in layer_decay_scales(encoder, recipe.layer_decay).items()}
    optimizer = LayerDecayAdamW(lr_scales=scales, learning_rate=schedule,
                                weight_decay=recipe.weight_decay or None,
                                global_clipnorm=recipe.clip_norm or None)
    no_decay = [v for v in model.trainable_variables if len(v.shape) <= 1]
    if encoder is not None:
        no_decay += encoder.no_weight_decay_variables()
    optimizer.exclude_from_weight_decay(var_list=no_decay)
    return optimizer


VALIDATION_ITEMS = 0.1  # share of the training items kept for validation canvases


def make_splits(items, recipe, train_canvases, val_canvases, test_canvases, seed=0):
    """`(train, val, test)` canvas dicts (`keras_conmim.data.canvas`): train and
    validation canvases from disjoint parts of the training items (the last
    10% of a seeded permutation go to validation, for choosing recipes), test
    canvases from the test items alone. `items`: (train, test) sources."""
    from keras_conmim.data.canvas import make_canvases

    train_items, test_items = items
    order = np.random.default_rng((seed, 7)).permutation(len(train_items.images))
    cut = len(order) - max(1, int(VALIDATION_ITEMS * len(order)))
    fit, held = np.sort(order[:cut]), np.sort(order[cut:])

    def canvases(images, labels, count, stream):
        return make_canvases(images, labels, count, recipe.canvas_size, recipe.max_items,
                             seed=seed * 10 + stream)

    return (canvases(train_items.images[fit], train_items.labels[fit], train_canvases, 0),
            canvases(train_items.images[held], train_items.labels[held], val_canvases, 1),
            canvases(test_items.images, test_items.labels, test_canvases, 2))


# The tasks that read objects, what a masks: set lacks for them, and their name.
NEEDS_OBJECTS = {"detect": ("boxes", "detection"),
                 "instance": ("boxes or objects", "instance segmentation")}


def dense_splits(task, spec, test_spec, size, channels, seed=0, caps=None):
    """`(train, val, test, about)` `data.dense.DenseSet`s from `coco:` /
    `masks:` specs at `size`: the test set is `test_spec`, else
    `data.sources.TEST_SHARE` of `spec` held out by seed; validation is
    `VALIDATION_ITEMS` of the rest, as for the canvases; `caps` (`{"train_
    canvases", "val_canvases", "test_canvases": count or None}`) limit each.
    `about`: class names, where the test set came from, what was skipped and
    converted (what results.json and the description say). A `DataError`
    names the flag and spec at fault."""
    from keras_conmim.data import dense
    from keras_conmim.data.sources import TEST_SHARE

    def read(flag, spec):
        try:
            found = dense.read_dense(spec, size, channels)
        except (ValueError, OSError, ImportError) as e:
            raise DataError(f"{flag} {spec}: {e}") from None
        if task in ("segment", "instance") and not found.has_masks:
            raise DataError(f"{flag} {spec}: no masks to segment (its annotations have no "
                            "segmentation); recipes/detect.py trains on its boxes")
        if task in NEEDS_OBJECTS and not found.has_boxes:
            lacks, name = NEEDS_OBJECTS[task]
            raise DataError(f"{flag} {spec}: masks: data has no {lacks}; {name} reads coco: "
                            "files (recipes/make_canvases.py shows the layout)")
        return found

    caps = caps or {}
    full = read("--data", spec)
    if test_spec:
        test = read("--test-data", test_spec)
        if test.class_names != full.class_names:
            raise DataError(f"--test-data {test_spec}: its classes "
                            f"({', '.join(test.class_names)}) differ from --data's "
                            f"({', '.join(full.class_names)}); both must name the same "
                            "categories in the same order")
        test_from = f"--test-data {test_spec}"
    else:
        full, test = dense.split_off(full, TEST_SHARE, seed, 11)
        test_from = (f"{TEST_SHARE:.0%} of --data held out by seed {seed} (--test-data SPEC "
                     "for a test set of your own)")
    train, val = dense.split_off(full, VALIDATION_ITEMS, seed, 12)
    train = dense.first(train, caps.get("train_canvases"), seed)
    val = dense.first(val, caps.get("val_canvases"), seed)
    test = dense.first(test, caps.get("test_canvases"), seed)
    skipped = dict(full.skipped)
    for reason, count in (test.skipped.items() if test_spec else ()):
        skipped[f"{reason} (test)"] = count
    notes = sorted(set(full.notes) | set(test.notes))
    return train, val, test, dict(class_names=list(full.class_names), test_from=test_from,
                                  skipped=skipped, notes=notes)


def targets_of(canvases, task, index=None, label_key="labels"):
    """What the task's model trains on: masks `[n, S, S, 1]` (segment),
    `{"boxes", label_key}` (detect, yxyx pixels, padding -1; KerasHub's
    detectors read "labels", Keras-CV's "classes"), or `{"boxes", "classes",
    "instances"}` (instance: `keras_conmim.InstanceSegmenter`'s targets)."""
    index = slice(None) if index is None else index
    if task == "segment":
        return canvases["masks"][index][..., None]
    if task == "instance":
        return {"boxes": canvases["boxes"][index], "classes": canvases["classes"][index],
                "instances": canvases["instances"][index]}
    return {"boxes": canvases["boxes"][index], label_key: canvases["classes"][index]}


def flip_batch(images, target, task, flip_rows):
    """Mirror the canvases where `flip_rows` (bool `[n]`) is set, with their
    masks or boxes."""
    if not flip_rows.any():
        return images, target
    images = images.copy()
    images[flip_rows] = images[flip_rows, :, ::-1]
    if task == "segment":
        target = target.copy()
        target[flip_rows] = target[flip_rows, :, ::-1]
        return images, target
    width = images.shape[2]
    boxes = target["boxes"].copy()
    label_key = next(k for k in target if k not in ("boxes", "instances"))
    valid = target[label_key] >= 0
    rows = flip_rows[:, None] & valid
    x0 = boxes[..., 1].copy()
    boxes[..., 1] = np.where(rows, width - boxes[..., 3], boxes[..., 1])
    boxes[..., 3] = np.where(rows, width - x0, boxes[..., 3])
    flipped = {"boxes": boxes, label_key: target[label_key]}
    if "instances" in target:
        flipped["instances"] = target["instances"].copy()
        flipped["instances"][flip_rows] = flipped["instances"][flip_rows, :, ::-1]
    return images, flipped


def batch_at(canvases, task, recipe, seed, step, label_key="labels"):
    """`(uint8 images, targets)` of global step `step`: the slice of epoch
    `step // batches_per_epoch`'s seeded permutation, flipped by a draw of
    (seed, step) alone, so a resumed run reads what the stopped one would have."""
    n = len(canvases["images"])
    bs = min(recipe.batch_size, n)
    epoch, i = divmod(int(step), n // bs)
    index = np.sort(np.random.default_rng((seed, epoch)).permutation(n)[i * bs:(i + 1) * bs])
    rng = np.random.default_rng((seed, 1, int(step)))
    return flip_batch(canvases["images"][index], targets_of(canvases, task, index, label_key),
                      task, rng.random(bs) < recipe.flip)


def canvas_batches(canvases, task, recipe, seed=0, first_step=0, steps_per_epoch=100,
                   label_key="labels"):
    """`data.step_batches.StepBatches` of `batch_at`: a resumed run reads the
    batches the stopped one would have."""
    from keras_conmim.data.step_batches import StepBatches

    return StepBatches(lambda step: batch_at(canvases, task, recipe, seed, step, label_key),
                       first_step, steps_per_epoch)


# ---- what users look at ----------------------------------------------------

def _palette(num_classes):
    """Colour per class id (0 = background black), fixed."""
    rng = np.random.default_rng(3)
    colours = rng.integers(60, 256, (max(num_classes, 1) + 1, 3)).astype(np.uint8)
    colours[0] = 0
    return colours


def _rgb(images):
    images = np.asarray(images)
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images[..., :3]


def _draw_boxes(canvas, boxes, classes, colours, scores=None, min_score=0.3):
    out = canvas.copy()
    h, w = out.shape[:2]
    for k, (box, cls) in enumerate(zip(boxes, classes)):
        if cls < 0 or (scores is not None and scores[k] < min_score) or not np.isfinite(box).all():
            continue
        y0, x0, y1, x1 = (int(round(float(v))) for v in box)
        y0, x0 = max(0, min(h - 1, y0)), max(0, min(w - 1, x0))
        y1, x1 = max(0, min(h - 1, y1 - 1)), max(0, min(w - 1, x1 - 1))
        colour = colours[int(cls) + 1]
        out[y0, x0:x1 + 1] = colour
        out[y1, x0:x1 + 1] = colour
        out[y0:y1 + 1, x0] = colour
        out[y0:y1 + 1, x1] = colour
    return out


def _draw_instances(canvas, masks, boxes, classes, colours, scores=None, min_score=0.3):
    """Each object's mask blended in its own colour, its box in its class's."""
    out = canvas.astype(np.float32)
    own = np.random.default_rng(5).integers(80, 256, (len(masks), 3))
    shown = [k for k in range(len(masks)) if classes[k] >= 0
             and (scores is None or scores[k] >= min_score)]
    for k in shown:
        m = np.asarray(masks[k]).astype(bool)
        out[m] = 0.4 * out[m] + 0.6 * own[k]
    keep = np.array([k in shown for k in range(len(masks))])
    return _draw_boxes(out.astype(np.uint8), boxes, np.where(keep, classes, -1), colours)


def picture_grid(images, truth, prediction, task, num_classes, scale=3):
    """A uint8 RGB picture: one row per canvas, `[image | truth | prediction]`.
    segment: `truth` / `prediction` are class masks `[n, S, S]` (0 =
    background) coloured per class; detect: dicts with `boxes` (yxyx
    pixels), `classes` (-1 = none) and, for the prediction, `scores` (boxes
    under 0.3 are not drawn), drawn on the canvas in the class colour;
    instance: the same dicts with `instances` maps (truth) / `masks`
    `[n, D, S, S]` (prediction), each object's mask in its own colour."""
    colours = _palette(num_classes)
    rgb = _rgb(images)
    rows = []
    for i in range(len(rgb)):
        if task == "segment":
            ignored = np.asarray(truth[i]) == IGNORE  # padding, crowd: grey
            shown = colours[np.clip(truth[i], 0, num_classes)]
            shown[ignored] = 128
            cells = [rgb[i], shown, colours[np.clip(prediction[i], 0, num_classes)]]
        elif task == "instance":
            rows_g = len(truth["classes"][i])
            truth_masks = [truth["instances"][i] == g + 1 for g in range(rows_g)]
            cells = [rgb[i], _draw_instances(rgb[i], truth_masks, truth["boxes"][i],
                                             truth["classes"][i], colours),
                     _draw_instances(rgb[i], prediction["masks"][i], prediction["boxes"][i],
                                     prediction["classes"][i], colours, prediction["scores"][i])]
        else:
            cells = [rgb[i], _draw_boxes(rgb[i], truth["boxes"][i], truth["classes"][i], colours),
                     _draw_boxes(rgb[i], prediction["boxes"][i], prediction["classes"][i],
                                 colours, prediction["scores"][i])]
        gap = np.full((rgb.shape[1], 2, 3), 128, np.uint8)
        rows.append(np.concatenate([cells[0], gap, cells[1], gap, cells[2]], axis=1))
        rows.append(np.full((2, rows[-1].shape[1], 3), 128, np.uint8))
    grid = np.concatenate(rows[:-1], axis=0)
    return np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)


DEFAULT_CANVASES = {"train_canvases": 2000, "val_canvases": 300, "test_canvases": 500}


def task_data(task, spec, test_spec, recipe, channels, counts, seed=0):
    """`(train, val, test, num_classes, about)` for `--data spec`: coco: /
    masks: sets (`dense_splits`; `counts` caps them), or canvases made from
    the items of `default` / `idx:` data at the items' own size, whatever the
    encoder's input size (`make_splits`; `counts` fills in from
    `DEFAULT_CANVASES`, in place, so the run records what it made)."""
    from keras_conmim import data
    from keras_conmim.data.dense import is_dense_spec

    if is_dense_spec(spec):
        train, val, test, about = dense_splits(task, spec, test_spec, recipe.canvas_size,
                                               channels, seed, counts)
        check_batch(recipe, train)
        return train, val, test, len(train.class_names), about
    if spec != "default" and not spec.startswith("idx:"):
        from keras_conmim.runs.cli import DENSE_SPECS

        raise DataError(f"--data {spec}: use one of {DENSE_SPECS}")
    if test_spec:
        raise ConfigError(f"--test-data goes with coco: / masks: data; --data {spec} makes "
                          "its test canvases from its own test items")
    for name, default in DEFAULT_CANVASES.items():
        counts[name] = counts.get(name) or default
    try:
        # the items at their own size: a 48 px encoder must not blow a 28 px
        # item up to fill the canvas (the scene would be another task)
        items = data.load_splits(spec, channels="rgb" if channels == 3 else "gray")
    except (ValueError, OSError) as e:
        raise DataError(f"--data {spec}: {e}") from None
    train, val, test = make_splits(items, recipe, counts["train_canvases"],
                                   counts["val_canvases"], counts["test_canvases"], seed=seed)
    check_batch(recipe, train)
    num_classes = int(max(s.labels.max() for s in items)) + 1
    return train, val, test, num_classes, dict(
        class_names=list(items[0].class_names or range(num_classes)))


def check_batch(recipe, train):
    """A batch larger than the training set: ConfigError naming both ways out."""
    if recipe.batch_size > len(train["images"]):
        raise ConfigError(f"batch_size {recipe.batch_size} is larger than the "
                          f"{len(train['images'])} training images: pass --batch-size "
                          f"{len(train['images'])} or less, or more --train-canvases")


def describe_data(about):
    """The lines a run prints about its data: classes, test images, notes, skips."""
    names = about["class_names"]
    lines = [f"classes ({len(names)}): {', '.join(map(str, names))}"]
    if "test_from" in about:
        lines.append(f"test images: {about['test_from']}")
    lines += [f"images: {note}" for note in about.get("notes", ())]
    lines += [f"skipped or fixed: {count} {reason}"
              for reason, count in about.get("skipped", {}).items()]
    return lines


def write_predictions(folder, task, test, prediction, num_classes, count, title):
    """predictions.png in the run folder (the first `count` test images:
    canvas | truth | prediction), and the same image in its TensorBoard log
    when TensorFlow is installed."""
    import os

    import keras

    n = min(count, len(test["images"]))
    truth = (test["masks"][:n] if task == "segment" else
             {k: test[k][:n] for k in ("boxes", "classes", "instances")})
    shown = prediction[:n] if task == "segment" else {k: v[:n] for k, v in prediction.items()}
    grid = picture_grid(test["images"][:n], truth, shown, task, num_classes)
    keras.utils.save_img(os.path.join(folder, "predictions.png"), grid, scale=False)
    try:
        import tensorflow as tf
    except ImportError:
        return
    with tf.summary.create_file_writer(os.path.join(folder, "tensorboard")).as_default():
        tf.summary.image(title, grid[None], step=0)


# Where a task model's SavedModel export works (keras_conmim.integrations.export.export_task_model):
# jax2tf cannot trace KerasHub's anchor generator.
EXPORT_BACKENDS = {"segment": ("jax", "tensorflow"), "detect": ("tensorflow",),
                   "instance": ("tensorflow",)}


def check_flags(task, args, positive):
    """ConfigError for the downstream flags that cannot work together,
    before anything loads (`positive`: the flags that must be >= 1)."""
    from keras_conmim.runs import cli

    if args.init != "resnet18":
        cli.check_encoder(args)
    cli.check_at_least_one(args, positive)
    if args.grid < 0:
        raise ConfigError("--grid must be >= 0")
    if args.export == "saved_model" and args.backend not in EXPORT_BACKENDS[task]:
        raise ConfigError(f"--export saved_model ({task}) needs --backend "
                          f"{' or '.join(EXPORT_BACKENDS[task])} (Keras exports SavedModels "
                          "from those); or train here and export model.keras later with "
                          "keras_conmim.integrations.export.export_task_model on one of them")
    return args
