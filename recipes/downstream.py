"""The run engine of recipes/segment.py, recipes/detect.py and
recipes/instance_segment.py: flags, the
resolved recipe printed with each value's source, one run per --output
folder (config.json, checkpoints, exact resume, log.csv, results.json,
predictions.png, model.keras), validation and test scores, and the
SavedModel export. The task modules bring their heads (`build`) and their
scoring (`predict`, `score`)."""

import argparse
import json
import os
import platform
import sys
import time

from keras_conmim import cli, run_folder
from keras_conmim.downstream_run import INITS, RECIPE_KEYS
from keras_conmim.data.dense import is_dense_spec
from keras_conmim.errors import ConfigError, DataError, ResumeError

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


def round_steps(steps, every):
    """The largest divisor of `steps` <= `every`: fit's epoch length, so
    checkpoints fall on a grid that ends exactly at the last step."""
    return max(d for d in range(1, min(steps, every) + 1) if steps % d == 0)


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
    import numpy as np

    from keras_conmim import data
    from keras_conmim.atomic import save_atomic, write_text_atomic
    from keras_conmim.callbacks import Checkpointer, list_checkpoints, resume_from_checkpoint
    from keras_conmim.classifier import finetune_encoder
    from keras_conmim.downstream_run import (
        canvas_batches, dense_splits, make_splits, optimizer_for, picture_grid, resolve_recipe,
    )
    from keras_conmim.finetune_run import preset_for
    from keras_conmim.run_config import read_config_file

    # --- everything that can be wrong is checked before a file is written
    args.from_scratch = args.init == "random"
    args.preset = None
    keras.utils.set_random_seed(args.seed)  # a random start's weights come from --seed
    encoder = cli.load_start(args)  # random / resnet18: the architecture, shape and channels
    preset = preset_for(encoder.get_config())
    # `backend` in the file is recipe_main's (it chose the backend before Keras loaded)
    from_file = read_config_file(args.config, (*RECIPE_KEYS, "backend")) if args.config else {}
    recipe, sources, text = resolve_recipe(
        task, args.init, preset, {k: getattr(args, k) for k in RECIPE_KEYS}, from_file,
        getattr(module, "HEAD_RECIPE", {}).get(args.head))
    module.check_head(args.head, args.init, recipe)
    h, w, c = encoder.image_shape
    if is_dense_spec(args.data):
        train, val, test, about = dense_splits(
            task, args.data, args.test_data, recipe.canvas_size, c, args.seed,
            {k: getattr(args, k) for k in CANVAS_FLAGS})
        num_classes = len(train.class_names)
    else:
        if args.data != "default" and not args.data.startswith("idx:"):
            raise DataError(f"--data {args.data}: use one of {cli.DENSE_SPECS}")
        if args.test_data:
            raise ConfigError(f"--test-data goes with coco: / masks: data; --data {args.data} "
                              "makes its test canvases from its own test items")
        for name, default in DEFAULT_CANVASES.items():
            setattr(args, name, getattr(args, name) or default)
        try:
            items = data.load_splits(args.data, image_size=(h, w),
                                     channels="rgb" if c == 3 else "gray")
        except (ValueError, OSError) as e:
            raise DataError(f"--data {args.data}: {e}") from None
        train, val, test = make_splits(items, recipe, args.train_canvases, args.val_canvases,
                                       args.test_canvases, seed=args.seed)
        num_classes = int(max(s.labels.max() for s in items)) + 1
        about = dict(class_names=list(items[0].class_names or range(num_classes)))
    if recipe.batch_size > len(train["images"]):
        raise ConfigError(f"batch_size {recipe.batch_size} is larger than the "
                          f"{len(train['images'])} training images: pass --batch-size "
                          f"{len(train['images'])} or less, or more --train-canvases")
    print(text, flush=True)
    for line in describe_data(about):
        print(line, flush=True)
    image_shape = (recipe.canvas_size, recipe.canvas_size, c)
    settings = dict(task=task, head=args.head, init=args.init,
                    encoder=None if args.init == "resnet18" else cli.encoder_path(args.encoder),
                    data=args.data, test_data=args.test_data, seed=args.seed,
                    num_classes=num_classes,
                    checkpoint_every=args.checkpoint_every,
                    **{k: getattr(args, k) for k in CANVAS_FLAGS}, **recipe.as_dict())
    output = args.output
    ckpt_dir = os.path.join(output, run_folder.CHECKPOINTS)

    with run_folder.hold(output):
        saved = None
        if run_folder.has_checkpoints(output) and not args.no_resume:
            saved = run_folder.read_config(output) or {}
            problems = run_folder.resume_problems(saved, settings, MUTABLE)
            if problems:
                raise ResumeError(f"{output} holds a stopped run with other settings:\n  "
                                  + "\n  ".join(problems) + "\nPass --no-resume to move it "
                                  "aside and start over, or another --output.")
        else:
            moved = run_folder.move_aside(output)
            if moved:
                print(f"{output} held an earlier run: moved to {moved}", flush=True)

        keras.utils.set_random_seed(args.seed)
        if args.init == "resnet18":
            start = None
        else:
            start = finetune_encoder(encoder, drop_path_rate=recipe.drop_path)
        model, tuned_encoder = module.build(args.head, start, image_shape, num_classes, recipe)
        model.compile(optimizer=optimizer_for(recipe, model, tuned_encoder),
                      **module.compile_args(keras, args.head))
        every = round_steps(recipe.steps, args.checkpoint_every)
        first_step = 0
        if saved is not None:
            path, first_step = resume_from_checkpoint(
                model, ckpt_dir, sample=np.zeros((1, *image_shape), "uint8"),
                moved_to=os.path.join(output, run_folder.PREVIOUS))
            print(f"resumed from {path}: {first_step} of {recipe.steps} steps done", flush=True)
        write_text_atomic(os.path.join(output, run_folder.CONFIG), run_folder.record(
            settings, sources, saved, "resume" if saved else "start", first_step,
            extra={"command": command_of(module, argv)}))
        print(f"{task} with {args.head} from {args.init}: backend={args.backend} "
              f"images train={len(train['images'])} val={len(val['images'])} "
              f"test={len(test['images'])} ({recipe.canvas_size} px, {num_classes} classes) "
              f"steps={recipe.steps} batch={recipe.batch_size}", flush=True)
        t0 = time.perf_counter()
        if first_step < recipe.steps:
            # keras.Model.fit itself: KerasHub's PipelineModel.fit turns any x that is
            # not a tf.data / grain dataset into one (a PyDataset included) to run its
            # preprocessor, which these models do not have.
            keras.Model.fit(model, canvas_batches(train, task, recipe, seed=args.seed,
                                                  first_step=first_step, steps_per_epoch=every,
                                                  label_key=getattr(module, "LABEL_KEYS", {})
                                                  .get(args.head, "labels")),
                            steps_per_epoch=every, epochs=recipe.steps // every,
                            initial_epoch=first_step // every, verbose=2,
                            callbacks=[Checkpointer(ckpt_dir, keep=2),
                                       keras.callbacks.CSVLogger(
                                           os.path.join(output, "log.csv"), append=True)])
        seconds = time.perf_counter() - t0
        trained = recipe.steps - first_step

        val_pred = module.predict(model, val["images"])
        test_pred = module.predict(model, test["images"])
        result = dict(task=task, head=args.head, init=args.init, backend=args.backend,
                      val=module.score(val_pred, val, num_classes),
                      test=module.score(test_pred, test, num_classes),
                      train_canvases=len(train["images"]), val_canvases=len(val["images"]),
                      test_canvases=len(test["images"]), steps=recipe.steps, **about,
                      resumed_at_step=first_step,
                      train_images_per_second=(round(trained * recipe.batch_size / seconds, 2)
                                               if trained else None),
                      machine=f"{platform.machine()}, {os.cpu_count()} cores")
        if args.grid:
            n = min(args.grid, len(test["images"]))
            truth = (test["masks"][:n] if task == "segment" else
                     {k: test[k][:n] for k in ("boxes", "classes", "instances")})
            shown = (test_pred[:n] if task == "segment" else
                     {k: v[:n] for k, v in test_pred.items()})
            grid = picture_grid(test["images"][:n], truth, shown, task, num_classes)
            write_picture(output, grid, f"{task} {args.init}: canvas | truth | prediction")
        save_atomic(model, os.path.join(output, "model.keras"))
        for path in list_checkpoints(ckpt_dir):  # the run is whole in model.keras
            os.remove(path)
        if os.path.isdir(ckpt_dir) and not os.listdir(ckpt_dir):
            os.rmdir(ckpt_dir)
        if args.export == "saved_model":
            from keras_conmim.export import export_task_model

            export_task_model(model, task, os.path.join(output, "serving"))
            result["serving"] = os.path.join(output, "serving")
        result.update(recipe=recipe.as_dict(), recipe_sources=sources,
                      command=command_of(module, argv))
        write_text_atomic(os.path.join(output, run_folder.RESULTS), json.dumps(result, indent=2))
    print(f"done: {module.result_line(result)}; run folder {output}", flush=True)
    return result


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
