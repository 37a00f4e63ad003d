"""Fine-tuning recipes that follow the run's budget: its length and how
many labelled images it has.

A preset's fine-tuning recipe (`PRESETS[name]["finetune"]`, or `["scratch"]`
for a random init) is written for its full schedule: the release's 100
ImageNet epochs, or SMALL_IMAGE_FINETUNE's. `budget_recipe` adapts it to the
run actually asked for, by fixed rules (values a user sets are never
changed; `recipes/finetune.py` passes them in `fixed`):

1. **Few labels, small batch.** The batch is at most a quarter of the
   labelled images (at least MIN_BATCH), so an epoch has several steps; the
   learning rate follows the batch linearly.
2. **Few labels, enough steps.** A run shorter than `min_steps` optimizer
   steps (MIN_STEPS unless given; 0 turns the rule off) gets more epochs
   until it has them (15 epochs of 100 images is 60 steps, too few for any
   model to fit). This applies to a given epoch count too.
3. **Short runs, less regularisation.** MixUp / CutMix, drop path, random
   erasing, the RandAugment magnitude and the train-time geometry (crop
   padding, the crop's area range, flip) exist for long schedules. They are
   scaled by `ramp = clip((steps - SHORT_STEPS) / (LONG_STEPS - SHORT_STEPS),
   0, 1)`, from 0 for runs of SHORT_STEPS optimizer steps or fewer to the
   recipe's value from LONG_STEPS on (the release's 100 ImageNet epochs are
   125,000 steps); RandAugment is off (no ops) where the ramp is 0. Counted
   in steps, not passes (75 passes over 100 labelled images are 300 steps, a
   short run). The geometry at ramp r: padding round(4 r) px, crop area from
   1 - 0.92 r, flip 0.5 r: crop "none" at r = 0 (unless a padding or area is
   given by hand).
4. **Warm-up** is at most a fifth of the run (the release warms up 20 of 100).
5. **The head** (`head_init`, `recipes/finetune.py --head-init auto`): a
   pre-trained encoder with at most LP_FT_MAX_PER_CLASS labels per class gets
   its head fitted first as a linear probe on the frozen features (LP-FT),
   its weight decay cross-validated on the labelled images
   (`ViTClassifier.init_head_from_probe`); with more labels, and from
   scratch, the release's head x0.001. The flatten head (`pooling="flatten"`,
   the Fashion-MNIST presets') starts small whatever the label count.

Not scaled: **layer decay** (the preset's value: none for the small presets,
the release's 0.65 for the 224 px ones).

The measurements behind each threshold (MIN_STEPS, SHORT_STEPS,
LP_FT_MAX_PER_CLASS, layer decay) and what is not measured: docs/finetuning.md,
"Why the budget rules are what they are".

Pure Python: no keras import.
"""

import math

SHORT_STEPS = 5_000
LONG_STEPS = 20_000
MIN_STEPS = 300
MIN_BATCH = 8
LP_FT_MAX_PER_CLASS = 1_000

RULES = {
    "batch_size": "at most a quarter of the labelled images",
    "lr": "linear in the batch size",
    "epochs": "at least min_steps optimizer steps",
    "mixup": "x ramp (run length in steps)",
    "cutmix": "x ramp (run length in steps)",
    "drop_path": "x ramp (run length in steps)",
    "randaugment_ops": "0 (off) where ramp is 0",
    "randaugment_factor": "x ramp (run length in steps)",
    "random_erasing": "x ramp (run length in steps)",
    "crop": "none where ramp is 0",
    "crop_padding": "x ramp (run length in steps), whole pixels",
    "crop_scale_min": "1 - (1 - recipe) x ramp (run length in steps)",
    "flip": "x ramp (run length in steps)",
    "warmup_epochs": "at most a fifth of the run",
}


def check_ramp_start(start):
    """Raises ValueError unless `start` (optimizer steps) can start the ramp:
    0 <= start < LONG_STEPS. `recipes/finetune.py` calls it on its flag, so a
    bad value fails before training starts."""
    if not 0 <= start < LONG_STEPS:
        raise ValueError(f"the ramp's start must be >= 0 and below LONG_STEPS ({LONG_STEPS}) "
                         f"steps, received {start}.")


def ramp(steps, start=SHORT_STEPS):
    """0 for runs of `start` (SHORT_STEPS) optimizer steps or fewer, 1 from
    LONG_STEPS, linear between."""
    check_ramp_start(start)
    return min(1.0, max(0.0, (steps - start) / (LONG_STEPS - start)))


def head_init(pretrained, num_labelled, num_classes, pooling="mean"):
    """How `--head-init auto` starts the head: "probe" (LP-FT) for a
    pre-trained encoder with at most LP_FT_MAX_PER_CLASS labelled images per
    class on average and a pooled (not flattened) head, else "small" (the
    release's head x0.001)."""
    few = num_labelled <= LP_FT_MAX_PER_CLASS * num_classes
    return "probe" if pretrained and few and "flatten" not in pooling else "small"


def budget_recipe(recipe, num_labelled, fixed=(), min_steps=MIN_STEPS, steps_per_epoch=None,
                  ramp_start=SHORT_STEPS):
    """`recipe` (a dict with the FINETUNE keys, `epochs` = the run's length)
    scaled to a run on `num_labelled` images.

    Returns `(scaled, changes)`: the new dict and `{key: rule}` for every
    value a rule changed. Keys in `fixed` are left as given (except `epochs`,
    raised to `min_steps` steps). `steps_per_epoch`: the run's, when it is not
    one pass over the labelled images. `ramp_start`: the steps up to which
    the ramp is 0 (`ramp`).
    """
    if num_labelled < 1:
        raise ValueError(f"num_labelled must be >= 1, received {num_labelled}.")
    out = dict(recipe)
    fixed = set(fixed)

    def set_value(key, value):
        if key not in fixed and value != out[key]:
            out[key] = value

    batch = max(MIN_BATCH, num_labelled // 4)
    if out["batch_size"] > batch and "batch_size" not in fixed:
        if "lr" not in fixed:
            out["lr"] = out["lr"] * batch / out["batch_size"]
        out["batch_size"] = batch
    if out["batch_size"] > num_labelled:
        raise ValueError(
            f"batch_size={out['batch_size']} is larger than the {num_labelled} labelled images: "
            "pass a smaller --batch-size or more --labels-per-class.")
    steps_per_epoch = steps_per_epoch or num_labelled // out["batch_size"]
    if min_steps < 0:
        raise ValueError(f"min_steps must be >= 0, received {min_steps}.")
    out["epochs"] = max(out["epochs"], math.ceil(min_steps / steps_per_epoch))
    r = ramp(out["epochs"] * steps_per_epoch, ramp_start)
    for key in ("mixup", "cutmix", "drop_path", "randaugment_factor", "random_erasing", "flip"):
        if key in recipe:  # a recipe written before a key existed leaves it out
            set_value(key, round(recipe[key] * r, 4))
    if "crop_padding" in recipe:  # the geometry's strength: no crop where the ramp is 0
        set_value("crop_padding", int(round(recipe["crop_padding"] * r)))
        set_value("crop_scale_min", round(1 - (1 - recipe["crop_scale_min"]) * r, 4))
        if r == 0 and not fixed & {"crop_padding", "crop_scale_min"}:  # said by hand: "on"
            set_value("crop", "none")
    if r == 0 and "randaugment_factor" not in fixed:  # a magnitude set by hand means "on"
        set_value("randaugment_ops", 0)
    set_value("warmup_epochs", min(recipe["warmup_epochs"], round(out["epochs"] / 5, 4)))
    changes = {k: RULES[k] for k in out if out[k] != recipe[k]}
    return out, changes
