"""The pre-training recipe's configuration, from flags and files to a model.

Every option with its type, default and help (`OPTIONS`), the merge
defaults < the preset's recipe < `--config` file < flags (`resolve_config`,
through `runs.config`, the one resolver every recipe uses), type coercion and
range checks that fail before the model is built, any data is read or any
file is written (`validate`, `view_errors`), which settings a resume may
change (`RESUMABLE_CHANGES`, `RECOVERY_CHANGES`; the check itself is the run
engine's, `runs.Run`), and `build_model`: `ConMIM.from_preset` and `pretrain_optimizer` with the
resolved values. Errors are `ConfigError` / `ResumeError`; only
`recipes/pretrain.py` turns them into an exit. The benchmarks build their
models through it too.
"""

import math
import os

from keras_conmim.runs import folder as run_folder
from keras_conmim.models.conmim import MODEL_RECIPE_KEYS, ConMIM
from keras_conmim.data.geometry import INTERPOLATIONS
from keras_conmim.errors import ConfigError, ResumeError
from keras_conmim.models.optimizers import pretrain_optimizer
from keras_conmim.presets import PRESETS
from keras_conmim.runs.config import BACKENDS, ArgumentParser, coerce, describe, read_config_file, resolve
from keras_conmim.models.train_step import jit_compile_for

MASKS = ("random", "block")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
RESIZE_POLICIES = ("crop", "pad", "center")
DISTRIBUTE_MODES = ("auto", "none", "data_parallel")
# PairedViews arguments a recipe's `views` may set (crop scale and symmetry
# have their own options).
VIEW_ARGS = ("crop_ratio", "flip_prob", "interpolation", "jitter_prob", "brightness", "contrast",
             "saturation", "hue", "grayscale_prob", "blur_prob", "blur_sigma", "solarize_prob",
             "mean", "std")

# name: (type, default, help). The config file uses the same names. A default
# of RECIPE means "from the preset's pre-training recipe" (presets.py).
RECIPE = "preset"
OPTIONS = {
    "backend": (str, None, f"one of {', '.join(BACKENDS)} (default: $KERAS_BACKEND or jax)"),
    "preset": (str, "vit_mini_p4_28", "encoder preset: architecture and its pre-training recipe"),
    "image_size": (int, None, "override the preset's image size"),
    "patch_size": (int, None, "override the preset's patch size"),
    "data": (str, "default", "default | idx:PATH (folder or images file) | dir:PATH | tfds:NAME | "
             "coco:ANNOTATIONS.json[:IMAGE_DIR] | masks:IMAGE_DIR:MASK_DIR (the images; labels "
             "unused)"),
    "tfds_download": (bool, False, "tfds:NAME: download and prepare it when it is not prepared "
                      "(default: read a prepared copy only; see $TFDS_DATA_DIR)"),
    "resize": (str, RECIPE, "crop | pad | center: how images reach the model's size"),
    "epochs": (int, RECIPE, "epochs to train in total"),
    "steps_per_epoch": (int, None, "default: one pass over the data"),
    "batch_size": (int, RECIPE, "images per step"),
    "lr": (float, RECIPE, "peak learning rate (AdamW, betas 0.9/0.98)"),
    "min_lr": (float, RECIPE, "end of the cosine"),
    "warmup_epochs": (float, RECIPE, "linear warmup, then per-step cosine"),
    "weight_decay": (float, RECIPE, "not on biases, norms, tokens, position tables"),
    "clip_norm": (float, RECIPE, "global gradient-norm clipping (none: off)"),
    "mask": (str, RECIPE, f"one of {', '.join(MASKS)}"),
    "mask_ratio": (float, RECIPE, "fraction of units (random) or patches (block) masked"),
    "mask_unit": (int, RECIPE, "random masks: unit side in patches"),
    "mask_token_position": (str, RECIPE, "none (release) | sincos: position code on mask tokens"),
    "temperature": (float, RECIPE, "InfoNCE temperature"),
    "objective": (str, "contrast", "contrast (ConMIM) or pixel (SimMIM baseline)"),
    "base_momentum": (float, RECIPE, "teacher momentum at step 0 (0 with final 0: no momentum)"),
    "final_momentum": (float, RECIPE, "teacher momentum at the last step"),
    "position_embedding": (str, None, "override: relative, absolute or sincos"),
    "symmetric_views": (bool, False, "strong perturbation on both views (ablation)"),
    "crop_scale_min": (float, RECIPE, "smallest random-resized-crop area fraction"),
    "views": (dict, RECIPE, "PairedViews arguments (config file only): view strengths"),
    "precision": (str, "float32", f"one of {', '.join(PRECISIONS)}"),
    "jit_compile": (str, "auto", "auto | on | off: compile the step (XLA on JAX / TensorFlow, "
                    "torch.compile on torch); auto: XLA on JAX, and on TensorFlow and torch "
                    "only with a GPU"),
    "distribute": (str, "auto", "auto | none | data_parallel: spread the global batch over "
                   "every device (JAX: keras.distribution, also multi-host; TensorFlow: "
                   "tf.distribute); auto: all devices when there are several"),
    "output": (str, "saved_models", "run directory (relative: to the current folder)"),
    "keep_checkpoints": (int, 3, "how many checkpoints to keep"),
    "checkpoint_every": (int, None, "also checkpoint every N steps (default: epoch ends)"),
    "view_grid_every": (int, 5, "epochs between pictures of the views"),
    "seed": (int, 0, "seed for weights, data order, views and masks"),
    "on_nan": (str, "stop", "stop | rollback: at a NaN/Inf loss, stop naming the last good "
               "checkpoint and the command that goes on from it with a lower lr; or roll back "
               "to that checkpoint by itself, skip the batches since it, scale the lr by "
               "--rollback-lr-factor and go on (at most --max-rollbacks times)"),
    "max_rollbacks": (int, 3, "--on-nan rollback: how many times a run may roll back"),
    "rollback_lr_factor": (float, 0.5, "--on-nan rollback: lr and min_lr are multiplied by this "
                           "at each rollback"),
}
RECIPE_KEYS = tuple(k for k, (_, default, _) in OPTIONS.items() if default == RECIPE)
# Settings a resumed run may change: where files go and how often, and how the
# same global batch is computed. Any other difference refuses to resume.
RESUMABLE_CHANGES = ("on_nan", "max_rollbacks", "rollback_lr_factor",
                     "backend", "output", "keep_checkpoints", "checkpoint_every",
                     "view_grid_every", "distribute", "tfds_download", "jit_compile")
# Settings a run resumed from a good checkpoint may change to climb out of a
# NaN: the optimizer's (learning rate, its floor, clipping, warm-up where the
# run is still warming up) and the precision. The run goes on from the
# checkpoint's step with the new values; `build_model` makes the model and its
# optimizer anew and the checkpoint's weights, optimizer state, step and RNG
# state are loaded into it. The schedule keeps its shape: the same warm-up +
# cosine over the same total steps, evaluated at the same step with the new
# peak and floor, lr(t) = min_lr' + (lr' - min_lr') (1 + cos(pi (t - w) /
# (T - w))) / 2 after the warm-up of w steps (T: the run's total steps).
RECOVERY_CHANGES = ("lr", "min_lr", "clip_norm", "precision", "warmup_epochs")
# Options that may be unset (None); clip_norm's "none" is None too.
NULLABLE = tuple(k for k, (_, default, _) in OPTIONS.items() if default is None) + ("clip_norm",)


def resolve_config(argv=None):
    """defaults < the preset's recipe < --config file < flags given on the
    command line. Returns (config, resume, sources): sources names where each
    recipe value came from ("preset", "file" or "flag"). Raises ConfigError
    naming every value that cannot work."""
    parser = ArgumentParser(description="ConMIM pre-training.")
    parser.add_argument("--config", help="YAML or JSON file with any of the options below")
    parser.add_argument("--no-resume", action="store_true",
                        help="start over even if --output holds checkpoints")
    for name, (kind, default, text) in OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action="store_const", const=True, default=None, help=text)
        elif kind is dict:
            continue
        elif name == "clip_norm":
            parser.add_argument(flag, type=_float_or_none, default=None,
                                help=f"{text} (default: {default})")
        else:
            parser.add_argument(flag, type=kind, default=None, help=f"{text} (default: {default})")
    args = parser.parse_args(argv)
    from_file = read_config_file(args.config, OPTIONS) if args.config else {}
    from_flags = {k: v for k, v in vars(args).items() if k in OPTIONS and v is not None}
    config = {name: default for name, (_, default, _) in OPTIONS.items()}
    config.update(from_file)
    config.update(from_flags)
    if config["preset"] not in PRESETS:
        raise ConfigError(f"invalid configuration:\n  preset={config['preset']!r}: choose one "
                          f"of {', '.join(PRESETS)}")
    recipe, sources = resolve(RECIPE_KEYS, PRESETS[config["preset"]]["pretrain"], from_file,
                              from_flags)
    config.update(recipe)
    if config["backend"] is None:
        config["backend"] = os.environ.get("KERAS_BACKEND", "jax")
    errors = []
    for name, (kind, _, _) in OPTIONS.items():
        origin = "flag" if name in from_flags else "file" if name in from_file else "default"
        try:
            config[name] = coerce(config[name], kind, name in NULLABLE)
        except ValueError as e:
            errors.append(f"{name}={config[name]!r} (from the {origin}): {e}")
    errors = errors or validate(config)
    if errors:
        raise ConfigError("\n  ".join(["invalid configuration:"] + errors))
    return config, not args.no_resume, sources


def _float_or_none(text):
    # "none" stays a string until the recipe is merged, so that the flag
    # still overrides a preset's value (None would read as "not given").
    return "none" if text.lower() == "none" else float(text)


def describe_recipe(config, sources):
    """The recipe values of `config`, one line each, with where they came from."""
    return describe(f"pre-training recipe ({config['preset']}):", config, sources, RECIPE_KEYS)


def validate(config):
    """Every impossible value, named with its valid range; nothing trains
    until this list is empty."""
    errors = []
    presets = PRESETS

    def choice(name, valid):
        if config[name] not in valid:
            errors.append(f"{name}={config[name]!r}: choose one of {', '.join(valid)}")

    choice("backend", BACKENDS)
    choice("mask", MASKS)
    choice("precision", PRECISIONS)
    choice("jit_compile", ("auto", "on", "off"))
    choice("distribute", DISTRIBUTE_MODES)
    if config["distribute"] == "data_parallel" and config["backend"] == "torch":
        errors.append("distribute=data_parallel: not on torch (Keras 3's torch trainer has no "
                      "multi-device fit); use --backend jax or tensorflow, or --distribute none")
    choice("objective", ("contrast", "pixel"))
    choice("on_nan", ("stop", "rollback"))
    if not isinstance(config["max_rollbacks"], int) or config["max_rollbacks"] < 0:
        errors.append(f"max_rollbacks={config['max_rollbacks']!r}: must be an integer >= 0")
    if not 0 < config["rollback_lr_factor"] < 1:
        errors.append(f"rollback_lr_factor={config['rollback_lr_factor']}: must be in (0, 1)")
    if config["position_embedding"] is not None:
        choice("position_embedding", ("relative", "absolute", "sincos"))
    if not 0 <= config["base_momentum"] <= config["final_momentum"] <= 1:
        errors.append(f"base_momentum={config['base_momentum']}, final_momentum="
                      f"{config['final_momentum']}: need 0 <= base <= final <= 1")
    if not 0 < config["crop_scale_min"] <= 1:
        errors.append(f"crop_scale_min={config['crop_scale_min']}: must be in (0, 1]")
    choice("preset", list(presets))
    for name in ("epochs", "batch_size", "keep_checkpoints", "view_grid_every"):
        if not isinstance(config[name], int) or config[name] < 1:
            errors.append(f"{name}={config[name]!r}: must be an integer >= 1")
    for name in ("steps_per_epoch", "checkpoint_every", "image_size", "patch_size"):
        if config[name] is not None and (not isinstance(config[name], int) or config[name] < 1):
            errors.append(f"{name}={config[name]!r}: must be an integer >= 1 (or unset)")
    if not config["lr"] > 0:
        errors.append(f"lr={config['lr']}: must be > 0")
    if not 0 <= config["min_lr"] <= config["lr"]:
        errors.append(f"min_lr={config['min_lr']}: must be in [0, lr={config['lr']}]")
    if config["warmup_epochs"] < 0 or config["weight_decay"] < 0:
        errors.append("warmup_epochs and weight_decay must be >= 0")
    if config["clip_norm"] is not None and not config["clip_norm"] > 0:
        errors.append(f"clip_norm={config['clip_norm']}: must be > 0 (or none)")
    choice("resize", RESIZE_POLICIES)
    choice("mask_token_position", ("none", "sincos"))
    if not isinstance(config["mask_unit"], int) or config["mask_unit"] < 1:
        errors.append(f"mask_unit={config['mask_unit']!r}: must be an integer >= 1")
    if not config["temperature"] > 0:
        errors.append(f"temperature={config['temperature']}: must be > 0")
    views = config["views"]
    if not isinstance(views, dict):
        errors.append(f"views={views!r}: must be a mapping of PairedViews arguments")
    else:
        bad = sorted(set(views) - set(VIEW_ARGS))
        if bad:
            errors.append(f"views: unknown keys {bad}; valid: {', '.join(VIEW_ARGS)}")
        errors += view_errors(views)
    ratio = config["mask_ratio"]
    if ratio is not None and not 0 < ratio < 1:
        errors.append(f"mask_ratio={ratio}: must be in (0, 1), exclusive")
    spec = config["data"]
    kind, _, arg = str(spec).partition(":")
    if not ((kind == "default" and not arg)
            or (kind in ("idx", "dir", "tfds", "coco", "masks") and arg)):
        errors.append(f"data={spec!r}: use default, idx:PATH, dir:PATH, tfds:NAME, "
                      "coco:ANNOTATIONS.json[:IMAGE_DIR] or masks:IMAGE_DIR:MASK_DIR")
    if config["preset"] in presets:
        preset = presets[config["preset"]]["config"]
        size = image_shape_of(config)[0]
        patch = config["patch_size"] or preset["patch_size"]
        if size % patch:
            errors.append(f"patch_size={patch} does not divide image_size={size}: "
                          f"pick a patch size among the divisors of {size}")
        elif (config["mask"] == "random" and isinstance(config["mask_unit"], int)
              and config["mask_unit"] > size // patch):
            errors.append(f"mask_unit={config['mask_unit']}: larger than the {size // patch} x "
                          f"{size // patch} patch grid ({size} px / patch {patch}); use at most "
                          f"{size // patch}")
    return errors


def view_errors(views):
    """Type and range of each `views` value (PairedViews checks the ranges
    again; here they fail before the model is built, with the key named)."""
    errors = []

    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    for key, value in views.items():
        if key == "interpolation":
            valid = INTERPOLATIONS
            ok, need = value in valid, " or ".join(valid)
        elif key in ("crop_ratio", "blur_sigma"):
            ok = (isinstance(value, (list, tuple)) and len(value) == 2
                  and all(number(v) and v > 0 for v in value) and value[0] <= value[1])
            need = "two numbers [low, high], 0 < low <= high"
        elif key in ("mean", "std"):
            ok = (isinstance(value, (list, tuple)) and len(value) in (1, 3)
                  and all(number(v) and (key == "mean" or v > 0) for v in value))
            need = "1 or 3 numbers" + (", all > 0" if key == "std" else "")
        elif key == "hue":
            ok, need = number(value) and 0 <= value <= 0.5, "a number in [0, 0.5]"
        elif key in ("brightness", "contrast", "saturation"):
            ok, need = number(value) and value >= 0, "a number >= 0"
        elif key in VIEW_ARGS:  # the probabilities
            ok, need = number(value) and 0 <= value <= 1, "a probability in [0, 1]"
        else:
            continue
        if not ok:
            errors.append(f"views.{key}={value!r}: must be {need}")
    return errors


def image_shape_of(config):
    """The encoder's `(H, W, C)` for a resolved config: --image-size, else the
    preset's (derived here once, for the checks, the data and the model)."""
    preset = PRESETS[config["preset"]]["config"]
    size = config.get("image_size") or preset["image_shape"][0]
    return (size, size, preset["image_shape"][-1])


def build_model(config, steps_per_epoch):
    """The ConMIM model and its optimizer, compiled, from a resolved config
    (`resolve_config`): `ConMIM.from_preset` with the config's recipe values
    (the one place a recipe becomes a model) and `pretrain_optimizer` over
    epochs x steps_per_epoch steps."""
    encoder_kwargs = {k: config[k] for k in ("patch_size", "position_embedding") if config.get(k)}
    encoder_kwargs["image_shape"] = image_shape_of(config)
    model = ConMIM.from_preset(
        config["preset"], load_weights=False, encoder_kwargs=encoder_kwargs,
        symmetric_views=bool(config.get("symmetric_views")),
        objective=config.get("objective", "contrast"), seed=config["seed"],
        total_steps=steps_per_epoch * config["epochs"],
        **{key: config[key] for key in MODEL_RECIPE_KEYS})
    model.compile(optimizer=pretrain_optimizer(config, steps_per_epoch),
                  jit_compile=jit_compile_for(config.get("jit_compile", "auto")))
    return model


def recovery_changes(saved, config):
    """{key: (the run's value, this command's)} for the RECOVERY_CHANGES a
    resume makes (empty when it makes none)."""
    if not saved:
        return {}
    return {key: (saved[key], config[key]) for key in RECOVERY_CHANGES
            if key in saved and not run_folder.same(saved[key], config[key])}


def check_warmup_change(saved, config, step, steps_per_epoch):
    """A warm-up change keeps the schedule's shape only while the run is still
    warming up under the new warm-up (`step` before its end): else ResumeError."""
    if saved is None or run_folder.same(saved.get("warmup_epochs"), config["warmup_epochs"]):
        return
    end = int(config["warmup_epochs"] * steps_per_epoch)
    if step >= end:
        raise ResumeError(
            f"warmup_epochs: the run resumes at step {step}, past the end of the new warm-up "
            f"(step {end}); changing it now would jump the cosine instead of keeping its shape. "
            "Keep --warmup-epochs, or lower --lr alone.")
