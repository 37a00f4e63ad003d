"""What recipes/segment.py, detect.py and instance_segment.py share: their
flags and the call into the run engine (`keras_conmim.runs.Run`: the run
folder, resume, checkpoints, log.csv, results.json, model.keras). The task
modules bring their heads (`build`) and scoring (`predict`, `score`)."""

import argparse
import os
import platform
import sys
import time

from keras_conmim.runs import cli
from keras_conmim.runs import Run, grid
from keras_conmim.runs.downstream import INITS, RECIPE_KEYS, DownstreamRecipe, check_flags
from keras_conmim.runs.config import add_recipe_flags, read_config_file

# Flags that may change when a run resumes: where files go, how it runs.
MUTABLE = ("backend", "output", "export", "grid")  # --checkpoint-every sets fit's epoch: fixed
CANVAS_FLAGS = ("train_canvases", "val_canvases", "test_canvases")


def parser(task, description, heads):
    p = argparse.ArgumentParser(description=description)
    add = p.add_argument
    cli.add_encoder(p, scratch=False)
    add("--init", choices=INITS, default="pretrained", help="pretrained: --encoder's weights; "
        "random: the same ViT at random init; resnet18: a KerasHub ResNet-18 from scratch")
    add("--head", choices=heads, default=None, help=f"default: {heads[0]}")
    cli.add_backend(p)
    cli.add_data(p, specs=cli.DENSE_SPECS)
    add("--config", default=None, help="a JSON or YAML file of recipe values")
    add("--output", default=os.path.join("runs", task), help="the run's folder")
    add("--train-canvases", type=int, default=None, help="labelled training canvases, the "
        "budget (default 2000); coco: / masks: data, at most this many training images")
    add("--val-canvases", type=int, default=None, help="validation canvases, from training "
        "items the training canvases never use (default 300); coco: / masks:, at most this "
        "many of the 10%% of --data held out")
    add("--test-canvases", type=int, default=None, help="test canvases, from the test items "
        "(default 500); coco: / masks:, at most this many test images")
    add("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    add("--grid", type=int, default=8, help="test canvases in predictions.png (0: none)")
    add("--export", choices=("none", "saved_model"), default="none", help="saved_model: also "
        "write <output>/serving, a SavedModel that takes uint8 images")
    add("--no-resume", action="store_true", help="start over, moving a stopped run aside")
    add("--seed", type=int, default=0)  # data, random starts, heads, flips
    add_recipe_flags(p, DownstreamRecipe)
    return p


def main(task, module, argv=None):
    """One downstream run of `module` (segment.py, detect.py...): the results."""
    p = parser(task, module.__doc__.splitlines()[0], module.HEADS)
    args = check_flags(task, p.parse_args(argv), (*CANVAS_FLAGS, "checkpoint_every"))
    args.head = args.head or module.HEADS[0]
    cli.use_backend(args.backend)
    import keras

    from keras_conmim.runs.downstream import describe_data, resolve_recipe, task_data
    from keras_conmim.runs.finetuning import preset_for

    args.from_scratch, args.preset = args.init == "random", None
    keras.utils.set_random_seed(args.seed)  # a random start's weights come from --seed
    encoder = cli.load_start(args)  # random / resnet18: the architecture, shape and channels
    # `backend` in the file is recipe_main's (it chose the backend before Keras loaded)
    from_file = read_config_file(args.config, (*RECIPE_KEYS, "backend")) if args.config else {}
    recipe, sources, text = resolve_recipe(  # --- all checked before a file is written
        task, args.init, preset_for(encoder.get_config()),
        {k: getattr(args, k) for k in RECIPE_KEYS}, from_file,
        getattr(module, "HEAD_RECIPE", {}).get(args.head))
    module.check_head(args.head, args.init, recipe)
    args.command, counts = command_of(module, argv), {k: getattr(args, k) for k in CANVAS_FLAGS}
    train, val, test, num_classes, about = task_data(
        task, args.data, args.test_data, recipe, encoder.image_shape[2], counts, args.seed)
    print("\n".join([text, *describe_data(about)]), flush=True)
    settings = dict(task=task, head=args.head, init=args.init,
                    encoder=None if args.init == "resnet18" else cli.encoder_path(args.encoder),
                    data=args.data, test_data=args.test_data, seed=args.seed,
                    num_classes=num_classes, checkpoint_every=args.checkpoint_every,
                    **counts, **recipe.as_dict())
    with Run(args.output, settings, sources, mutable=MUTABLE, no_resume=args.no_resume,
             log=lambda line: print(line, flush=True)) as run:
        result = train_and_score(run, task, module, args, recipe, encoder,
                                 (train, val, test), num_classes, about)
        result.update(recipe=recipe.as_dict(), recipe_sources=sources, command=args.command)
        run.finish({"model.keras": run.model}, result)
    print(f"done: {module.result_line(result)}; run folder {args.output}", flush=True)
    return result


def train_and_score(run, task, module, args, recipe, encoder, splits, num_classes, about):
    """Build, train from where `run` stands, score, draw, export: the results."""
    import keras
    import numpy as np

    from keras_conmim.downstream.classifier import finetune_encoder
    from keras_conmim.runs.downstream import canvas_batches, optimizer_for, write_predictions

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
                  test=module.score(test_pred, test, num_classes), steps=recipe.steps,
                  **{f"{k}_canvases": len(v["images"]) for k, v in zip(("train", "val", "test"),
                                                                        splits)},
                  **about, resumed_at_step=first_step,
                  machine=f"{platform.machine()}, {os.cpu_count()} cores",
                  train_images_per_second=(round(trained * recipe.batch_size / seconds, 2)
                                           if trained else None))
    if args.grid:
        write_predictions(args.output, task, test, test_pred, num_classes, args.grid,
                          f"{task} {args.init}: canvas | truth | prediction")
    if args.export == "saved_model":
        from keras_conmim.integrations.export import export_task_model

        export_task_model(model, task, os.path.join(args.output, "serving"))
        result["serving"] = os.path.join(args.output, "serving")
    return result


def command_of(module, argv):
    return [f"recipes/{os.path.basename(module.__file__)}",
            *(sys.argv[1:] if argv is None else argv)]
