"""What recipes/segment.py, recipes/detect.py and recipes/instance_segment.py
share: their flags, the resolved recipe printed with each value's source,
the data (canvases or coco: / masks: sets), validation and test scores,
predictions.png and the SavedModel export. The run itself (one run per
--output folder, config.json, checkpoints, exact resume, log.csv,
results.json, model.keras) is the package's engine, `keras_conmim.runs.Run`.
The task modules bring their heads (`build`) and their scoring (`predict`,
`score`)."""

import argparse
import json
import os
import platform
import sys
import time

from keras_conmim import cli
from keras_conmim.runs import Run, grid
from keras_conmim.downstream_run import INITS, RECIPE_KEYS
from keras_conmim.data.dense import is_dense_spec
from keras_conmim.errors import ConfigError, DataError

# Flags that may change when a run resumes: where files go, how it runs.
MUTABLE = ("backend", "output", "export", "grid")  # --checkpoint-every sets fit's epoch: fixed
CANVAS_FLAGS = ("train_canvases", "val_canvases", "test_canvases")
DEFAULT_CANVASES = {"train_canvases": 2000, "val_canvases": 300, "test_canvases": 500}
# Where a task model's SavedModel export works (keras_conmim.export.export_task_model):
# jax2tf cannot trace KerasHub's anchor generator.
EXPORT_BACKENDS = {"segment": ("jax", "tensorflow"), "detect": ("tensorflow",),
                   "instance": ("tensorflow",)}


def parser(task, description, heads, default_help=None):
    p = argparse.ArgumentParser(description=description)
    cli.add_encoder(p, scratch=False)
    p.add_argument("--init", choices=INITS, default="pretrained",
                   help="pretrained: --encoder's weights; random: the same ViT at random init; "
                   "resnet18: a KerasHub ResNet-18 from scratch (the convolutional baseline)")
    p.add_argument("--head", choices=heads, default=None,
                   help=f"default: {default_help}" if default_help else None)
    cli.add_backend(p)
    cli.add_data(p, specs=cli.DENSE_SPECS)
    p.add_argument("--config", default=None,
                   help="a JSON or YAML file of recipe values (between the preset's and the flags')")
    p.add_argument("--output", default=os.path.join("runs", task),
                   help="the run's folder (one run per folder; a finished or other run there is "
                   "moved into previous_runs/, a stopped one with the same settings resumes)")
    p.add_argument("--train-canvases", type=int, default=None,
                   help="labelled training canvases, the budget (default 2000); with coco: / "
                   "masks: data, at most this many training images (default: all)")
    p.add_argument("--val-canvases", type=int, default=None,
                   help="validation canvases, from training items the training canvases never "
                   "use (default 300); coco: / masks:, at most this many of the 10%% of --data "
                   "held out for validation")
    p.add_argument("--test-canvases", type=int, default=None,
                   help="test canvases, from the test items (default 500); coco: / masks:, at "
                   "most this many test images")
    recipe = p.add_argument_group("recipe (default: the preset's; see keras_conmim.presets)")
    types = {"steps": int, "batch_size": int, "canvas_size": int, "max_items": int}
    for key in RECIPE_KEYS:
        names = [f"--{key.replace('_', '-')}"] + (["--image-size"] if key == "canvas_size" else [])
        recipe.add_argument(*names, dest=key, type=types.get(key, float), default=None,
                            help="the square input size: canvases are made at it, images of "
                            "coco: / masks: data letterboxed to it" if key == "canvas_size"
                            else None)
    p.add_argument("--checkpoint-every", type=int, default=100,
                   help="optimizer steps between checkpoints (and log.csv rows)")
    p.add_argument("--grid", type=int, default=8,
                   help="test canvases in predictions.png (0: none)")
    p.add_argument("--export", choices=("none", "saved_model"), default="none",
                   help="saved_model: also write <output>/serving, a SavedModel that takes uint8 "
                   "images (segment: TensorFlow or JAX backend; detect, instance: TensorFlow)")
    p.add_argument("--no-resume", action="store_true",
                   help="start over even if --output holds a stopped run of these settings")
    p.add_argument("--seed", type=int, default=0)
    return p


def check(task, args):
    """ConfigError for flags that cannot work together, before anything loads."""
    if args.init != "resnet18":
        cli.check_encoder(args)
    cli.check_at_least_one(args, (*CANVAS_FLAGS, "checkpoint_every"))
    if args.grid < 0:
        raise ConfigError("--grid must be >= 0")
    if args.export == "saved_model" and args.backend not in EXPORT_BACKENDS[task]:
        raise ConfigError(f"--export saved_model ({task}) needs --backend "
                          f"{' or '.join(EXPORT_BACKENDS[task])} (Keras exports SavedModels "
                          "from those); or train here and export model.keras later with "
                          "keras_conmim.export.export_task_model on one of them")
    return args


def load_data(task, args, recipe, channels):
    """`(train, val, test, num_classes, about)`: coco: / masks: sets, or
    canvases made from the items of default / idx: data."""
    from keras_conmim import data
    from keras_conmim.downstream_run import dense_splits, make_splits

    if is_dense_spec(args.data):
        train, val, test, about = dense_splits(
            task, args.data, args.test_data, recipe.canvas_size, channels, args.seed,
            {k: getattr(args, k) for k in CANVAS_FLAGS})
        return train, val, test, len(train.class_names), about
    if args.data != "default" and not args.data.startswith("idx:"):
        raise DataError(f"--data {args.data}: use one of {cli.DENSE_SPECS}")
    if args.test_data:
        raise ConfigError(f"--test-data goes with coco: / masks: data; --data {args.data} "
                          "makes its test canvases from its own test items")
    for name, default in DEFAULT_CANVASES.items():
        setattr(args, name, getattr(args, name) or default)
    try:
        items = data.load_splits(args.data, image_size=args.item_size,
                                 channels="rgb" if channels == 3 else "gray")
    except (ValueError, OSError) as e:
        raise DataError(f"--data {args.data}: {e}") from None
    train, val, test = make_splits(items, recipe, args.train_canvases, args.val_canvases,
                                   args.test_canvases, seed=args.seed)
    num_classes = int(max(s.labels.max() for s in items)) + 1
    return train, val, test, num_classes, dict(
        class_names=list(items[0].class_names or range(num_classes)))


def main(task, module, argv=None):
    """Run one downstream training: `module` is recipes/segment.py,
    recipes/detect.py or recipes/instance_segment.py. Returns the results dict."""
    p = parser(task, module.__doc__.splitlines()[0], module.HEADS,
               getattr(module, "DEFAULT_HEAD_HELP", module.HEADS[0]))
    args = check(task, p.parse_args(argv))
    args.head = args.head or (module.default_head(args.init) if hasattr(module, "default_head")
                              else module.HEADS[0])
    cli.use_backend(args.backend)
    import keras

    from keras_conmim.downstream_run import resolve_recipe
    from keras_conmim.finetune_run import preset_for
    from keras_conmim.run_config import read_config_file

    # --- everything that can be wrong is checked before a file is written
    args.from_scratch, args.preset = args.init == "random", None
    keras.utils.set_random_seed(args.seed)  # a random start's weights come from --seed
    encoder = cli.load_start(args)  # random / resnet18: the architecture, shape and channels
    # `backend` in the file is recipe_main's (it chose the backend before Keras loaded)
    from_file = read_config_file(args.config, (*RECIPE_KEYS, "backend")) if args.config else {}
    recipe, sources, text = resolve_recipe(
        task, args.init, preset_for(encoder.get_config()),
        {k: getattr(args, k) for k in RECIPE_KEYS}, from_file,
        getattr(module, "HEAD_RECIPE", {}).get(args.head))
    module.check_head(args.head, args.init, recipe)
    h, w, c = encoder.image_shape
    args.item_size, args.command = (h, w), command_of(module, argv)
    train, val, test, num_classes, about = load_data(task, args, recipe, c)
    if recipe.batch_size > len(train["images"]):
        raise ConfigError(f"batch_size {recipe.batch_size} is larger than the "
                          f"{len(train['images'])} training images: pass --batch-size "
                          f"{len(train['images'])} or less, or more --train-canvases")
    print("\n".join([text, *describe_data(about)]), flush=True)
    settings = dict(task=task, head=args.head, init=args.init,
                    encoder=None if args.init == "resnet18" else cli.encoder_path(args.encoder),
                    data=args.data, test_data=args.test_data, seed=args.seed,
                    num_classes=num_classes, checkpoint_every=args.checkpoint_every,
                    **{k: getattr(args, k) for k in CANVAS_FLAGS}, **recipe.as_dict())
    with Run(args.output, settings, sources, mutable=MUTABLE, no_resume=args.no_resume,
             log=lambda line: print(line, flush=True)) as run:
        result = train_and_score(run, task, module, args, recipe, encoder,
                                 (train, val, test), num_classes, about)
        result.update(recipe=recipe.as_dict(), recipe_sources=sources, command=args.command)
        run.finish({"model.keras": run.model}, result)
    print(f"done: {module.result_line(result)}; run folder {args.output}", flush=True)
    return result


def train_and_score(run, task, module, args, recipe, encoder, splits, num_classes, about):
    """Build the task model, train it in `run` from where the run stands,
    score validation and test, draw predictions.png, export if asked.
    Returns the results dict (the model is `run.model`)."""
    import keras
    import numpy as np

    from keras_conmim.classifier import finetune_encoder
    from keras_conmim.downstream_run import canvas_batches, optimizer_for

    train, val, test = splits
    image_shape = (recipe.canvas_size, recipe.canvas_size, encoder.image_shape[-1])
    keras.utils.set_random_seed(args.seed)
    start = None if args.init == "resnet18" else finetune_encoder(
        encoder, drop_path_rate=recipe.drop_path)
    model, tuned_encoder = module.build(args.head, start, image_shape, num_classes, recipe)
    model.compile(optimizer=optimizer_for(recipe, model, tuned_encoder),
                  **module.compile_args(keras, args.head))
    run.model = model
    first_step = run.start(model, sample=np.zeros((1, *image_shape), "uint8"),
                           extra={"command": args.command})
    print(f"{task} with {args.head} from {args.init}: backend={args.backend} "
          f"images train={len(train['images'])} val={len(val['images'])} "
          f"test={len(test['images'])} ({recipe.canvas_size} px, {num_classes} classes) "
          f"steps={recipe.steps} batch={recipe.batch_size}", flush=True)
    every = grid(recipe.steps, args.checkpoint_every)
    t0 = time.perf_counter()
    run.fit(model, canvas_batches(train, task, recipe, seed=args.seed, first_step=first_step,
                                  steps_per_epoch=every,
                                  label_key=getattr(module, "LABEL_KEYS", {})
                                  .get(args.head, "labels")),
            recipe.steps, every, first_step)
    seconds, trained = time.perf_counter() - t0, recipe.steps - first_step
    test_pred = module.predict(model, test["images"])
    result = dict(task=task, head=args.head, init=args.init, backend=args.backend,
                  val=module.score(module.predict(model, val["images"]), val, num_classes),
                  test=module.score(test_pred, test, num_classes),
                  train_canvases=len(train["images"]), val_canvases=len(val["images"]),
                  test_canvases=len(test["images"]), steps=recipe.steps, **about,
                  resumed_at_step=first_step,
                  train_images_per_second=(round(trained * recipe.batch_size / seconds, 2)
                                           if trained else None),
                  machine=f"{platform.machine()}, {os.cpu_count()} cores")
    if args.grid:
        draw_predictions(args, task, test, test_pred, num_classes)
    if args.export == "saved_model":
        from keras_conmim.export import export_task_model

        export_task_model(model, task, os.path.join(args.output, "serving"))
        result["serving"] = os.path.join(args.output, "serving")
    return result


def draw_predictions(args, task, test, test_pred, num_classes):
    from keras_conmim.downstream_run import picture_grid

    n = min(args.grid, len(test["images"]))
    truth = (test["masks"][:n] if task == "segment" else
             {k: test[k][:n] for k in ("boxes", "classes", "instances")})
    shown = test_pred[:n] if task == "segment" else {k: v[:n] for k, v in test_pred.items()}
    grid_image = picture_grid(test["images"][:n], truth, shown, task, num_classes)
    write_picture(args.output, grid_image, f"{task} {args.init}: canvas | truth | prediction")


def describe_data(about):
    names = about["class_names"]
    lines = [f"classes ({len(names)}): {', '.join(map(str, names))}"]
    if "test_from" in about:
        lines.append(f"test images: {about['test_from']}")
    lines += [f"images: {note}" for note in about.get("notes", ())]
    lines += [f"skipped or fixed: {count} {reason}"
              for reason, count in about.get("skipped", {}).items()]
    return lines


def command_of(module, argv):
    return [f"recipes/{os.path.basename(module.__file__)}",
            *(sys.argv[1:] if argv is None else argv)]


def write_picture(output, grid, title):
    """predictions.png in the run folder, and the same image in its
    TensorBoard log when TensorFlow is installed."""
    import keras

    keras.utils.save_img(os.path.join(output, "predictions.png"), grid, scale=False)
    try:
        import tensorflow as tf
    except ImportError:
        return
    with tf.summary.create_file_writer(os.path.join(output, "tensorboard")).as_default():
        tf.summary.image(title, grid[None], step=0)
