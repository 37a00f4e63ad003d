"""The pre-training recipe's configuration, from flags and files to a model.

Keras-free at import (the backend is chosen from `--backend` after this
runs): every option with its type, default and help (`OPTIONS`), the
merge defaults < the preset's recipe < `--config` file < flags
(`resolve_config`), type coercion and range checks that fail before Keras
loads (`coerce`, `validate`, `view_errors`), the resume check against the run
folder's `config.json` (`check_resume`), and `build_model`, the one place a
resolved config becomes a compiled `ConMIM` (imports Keras when called).
`recipes/pretrain.py` is the command line over it; the benchmarks build
their models through it too.
"""

import argparse
import json
import math
import os

from keras_conmim import run_folder
from keras_conmim.data.geometry import INTERPOLATIONS
from keras_conmim.presets import PRESETS

# The repository root (recipes write to its saved_models/ by default).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("jax", "tensorflow", "torch")
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
    "data": (str, "default", "default | idx:PATH (folder or images file) | dir:PATH | tfds:NAME"),
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
    "output": (str, os.path.join(ROOT, "saved_models"), "run directory"),
    "keep_checkpoints": (int, 3, "how many checkpoints to keep"),
    "checkpoint_every": (int, None, "also checkpoint every N steps (default: epoch ends)"),
    "view_grid_every": (int, 5, "epochs between pictures of the views"),
    "seed": (int, 0, "seed for weights, data order, views and masks"),
}
RECIPE_KEYS = tuple(k for k, (_, default, _) in OPTIONS.items() if default == RECIPE)
# Settings a resumed run may change: where files go and how often, and how the
# same global batch is computed. Any other difference refuses to resume.
RESUMABLE_CHANGES = ("backend", "output", "keep_checkpoints", "checkpoint_every",
                     "view_grid_every", "distribute", "tfds_download", "jit_compile")
# Options that may be unset (None); clip_norm's "none" is None too.
NULLABLE = tuple(k for k, (_, default, _) in OPTIONS.items() if default is None) + ("clip_norm",)


def _read_config_file(path):
    if not os.path.isfile(path):
        raise SystemExit(f"error: --config {path}: file not found.")
    with open(path) as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise SystemExit("error: YAML configs need PyYAML (pip install pyyaml), or use JSON.")
        config = yaml.safe_load(text) or {}
    else:
        config = json.loads(text)
    unknown = sorted(set(config) - set(OPTIONS))
    if unknown:
        raise SystemExit(f"error: --config {path}: unknown keys {unknown}. "
                         f"Valid keys: {', '.join(OPTIONS)}.")
    return config


def resolve_config(argv=None):
    """defaults < the preset's recipe < --config file < flags given on the
    command line. Returns (config, resume, sources): sources names where each
    recipe value came from ("preset", "file" or "flag")."""
    parser = argparse.ArgumentParser(description="ConMIM pre-training.")
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
    from_file = _read_config_file(args.config) if args.config else {}
    from_flags = {k: v for k, v in vars(args).items() if k in OPTIONS and v is not None}
    config = {name: default for name, (_, default, _) in OPTIONS.items()}
    config.update(from_file)
    config.update(from_flags)
    presets = PRESETS
    if config["preset"] not in presets:
        parser.error(f"invalid configuration:\n  preset={config['preset']!r}: choose one of "
                     f"{', '.join(presets)}")
    recipe = presets[config["preset"]]["pretrain"]
    sources = {}
    for key in RECIPE_KEYS:
        if key in from_flags:
            sources[key] = "flag"
        elif key in from_file:
            sources[key] = "file"
        else:
            config[key] = recipe[key]
            sources[key] = "preset"
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
        parser.error("\n  ".join(["invalid configuration:"] + errors))
    return config, not args.no_resume, sources


def coerce(value, kind, nullable=False):
    """`value` as `kind` where that is unambiguous ("1e-3" -> 0.001, 4.0 ->
    4, "true" -> True), else ValueError saying what is expected. Floats must
    be finite; a bool is no number."""
    if value is None or (nullable and isinstance(value, str) and value.lower() == "none"):
        if nullable:
            return None
        raise ValueError("must be set")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError("must be true or false")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueError("must be a string")
    if kind is dict:
        if isinstance(value, dict):
            return value
        raise ValueError("must be a mapping")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"must be {'an integer' if kind is int else 'a number'}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"must be {'an integer' if kind is int else 'a number'}") from None
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    if kind is int:
        if isinstance(value, int):
            return value
        if not number.is_integer():
            raise ValueError("must be an integer")
        return int(number)
    return number


def _float_or_none(text):
    # "none" stays a string until the recipe is merged, so that the flag
    # still overrides a preset's value (None would read as "not given").
    return "none" if text.lower() == "none" else float(text)


def describe_recipe(config, sources):
    """The recipe values of `config`, one line each, with where they came from."""
    lines = [f"pre-training recipe ({config['preset']}):"]
    for key in RECIPE_KEYS:
        origin = "" if sources.get(key) == "preset" else f"   <- {sources.get(key)}"
        lines.append(f"  {key:<20} {json.dumps(config[key])}{origin}")
    return "\n".join(lines)


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
    if not ((kind == "default" and not arg) or (kind in ("idx", "dir", "tfds") and arg)):
        errors.append(f"data={spec!r}: use default, idx:PATH, dir:PATH or tfds:NAME")
    if config["preset"] in presets:
        preset = presets[config["preset"]]["config"]
        size = config["image_size"] or preset["image_shape"][0]
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
    again; here they fail before Keras loads, with the key named)."""
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


def build_model(config, steps_per_epoch):
    """The ConMIM model and its optimizer, compiled, from a resolved config
    (`resolve_config`): the one place a recipe's values become a model. The
    total schedule is epochs x steps_per_epoch."""
    import keras

    import keras_conmim as kc

    preset = kc.PRESETS[config["preset"]]
    vit_args = {k: config[k] for k in ("patch_size", "position_embedding") if config.get(k)}
    size = config.get("image_size") or preset["config"]["image_shape"][0]
    vit_args["image_shape"] = (size, size, preset["config"]["image_shape"][-1])
    vit_args["mask_token_position"] = config["mask_token_position"]
    total = steps_per_epoch * config["epochs"]
    encoder = kc.ViT.from_preset(config["preset"], **vit_args)
    mask_kwargs = {"mask_ratio": config["mask_ratio"]} if config["mask_ratio"] else {}
    if config["mask"] == "random":
        mask_kwargs["unit_size"] = config["mask_unit"]
    views = dict(config["views"])
    for key in ("crop_ratio", "blur_sigma", "mean", "std"):
        if views.get(key) is not None:
            views[key] = tuple(views[key])
    model = kc.ConMIM(
        encoder, projector=kc.ProjectionHead(**preset["projector"]),
        mask_generator=kc.get_mask_generator(
            config["mask"], encoder.grid_size, seed=config["seed"], **mask_kwargs),
        views=kc.PairedViews(encoder.image_shape[:2], crop_scale=(config["crop_scale_min"], 1.0),
                             symmetric=bool(config.get("symmetric_views")),
                             seed=config["seed"] + 1, **views),
        temperature=config["temperature"],
        base_momentum=config["base_momentum"], final_momentum=config["final_momentum"],
        objective=config.get("objective", "contrast"), total_steps=total, seed=config["seed"])
    schedule = kc.warmup_cosine(config["lr"], total, config["warmup_epochs"] * steps_per_epoch,
                                config["min_lr"])
    model.compile(optimizer=keras.optimizers.AdamW(
        schedule, weight_decay=config["weight_decay"], beta_1=0.9, beta_2=0.98,
        epsilon=1e-8, global_clipnorm=config["clip_norm"]),
        jit_compile=kc.train_step.jit_compile_for(config.get("jit_compile", "auto")))
    return model


def check_resume(config, resume):
    """Whether this run resumes the one in --output (it has checkpoints and
    --no-resume was not given), checked before Keras loads: the run there
    must have been made with these settings, else exit naming each
    difference and the ways out. Returns (resuming, saved config or None)."""
    run = run_folder
    output = config["output"]
    if not (resume and run.has_checkpoints(output)):
        return False, None
    saved = run.read_config(output)
    if saved is None:
        print(f"warning: {output} has checkpoints but no config.json (an older version's run): "
              "resuming without checking its settings", flush=True)
        return True, None
    problems = run.resume_problems(saved, config, RESUMABLE_CHANGES)
    if problems:
        raise SystemExit(
            f"error: {output} holds a run made with other settings, which a resume would "
            "silently ignore:\n  " + "\n  ".join(problems) + "\nResume it with its own "
            f"settings ({os.path.join(output, run.CONFIG)} lists them), or start a new run: "
            f"add --no-resume (the run there is moved to {os.path.join(output, run.PREVIOUS)}/, "
            "not deleted) or pass another --output.")
    return True, saved
