"""Fine-tune a pre-trained encoder into a classifier (the release's recipe,
scaled to the run), or train the same classifier from scratch.

    python recipes/finetune.py            # the shipped backbone (preset conmim_vit_mini_p4_28_fmnist), packaged data
    python recipes/finetune.py --encoder saved_models/teacher_encoder.keras
    python recipes/finetune.py --from-scratch --preset vit_mini_p4_28
    python recipes/finetune.py --data idx:/usr/share/datasets/fashion-mnist --labels-per-class 100
    python recipes/finetune.py --data dir:photos/train --test-data dir:photos/test   # PATH/<class>/*.jpg

Unset recipe values come from the preset's recipe (`PRESETS[name]["finetune"]`,
or `["scratch"]` with --from-scratch), scaled to the run's length and labels
by `keras_conmim.finetune_budget` (--fixed-recipe: as written); a flag's value
is never scaled, and the run prints every value with where it came from.
Every epoch end checkpoints into --checkpoint-dir; the same command continues
from there (--no-resume starts over). Prints the test top-1 and saves the
classifier. The whole recipe, its rules and what measured them:
docs/finetuning.md.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import recipe_main  # stdlib only: chooses the backend before Keras loads

if __name__ == "__main__":
    recipe_main.choose_backend()
from keras_conmim import cli  # noqa: E402  (after choosing the backend)
from keras_conmim.errors import ConfigError  # noqa: E402
from keras_conmim.data.geometry import CROPS, check_geometry  # noqa: E402
from keras_conmim.finetune_budget import check_ramp_start  # noqa: E402
from keras_conmim.presets import POOLINGS  # noqa: E402
from keras_conmim.run_config import read_config_file  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_encoder(p)
    cli.add_backend(p)
    cli.add_data(p)
    p.add_argument("--labels-per-class", type=int, default=None,
                   help="fine-tune on N labelled images per class (class-balanced, seeded by "
                   "--seed); default: every training image")
    p.add_argument("--min-steps", type=int, default=None,
                   help="few labels: raise the epochs until the run has this many steps "
                   "(default finetune_budget.MIN_STEPS; 0: off)")
    p.add_argument("--ramp-start-steps", type=int, default=None,
                   help="the optimizer steps up to which MixUp, CutMix, RandAugment, drop "
                   "path, random erasing, crop and flip are off (default "
                   "finetune_budget.SHORT_STEPS, 5,000; 1,000 before it was measured)")
    p.add_argument("--fixed-recipe", action="store_true",
                   help="use the preset's recipe as written, not scaled to the run")
    p.add_argument("--head-init", choices=("auto", "probe", "small"), default="auto",
                   help="probe: fit the head as a linear probe on the frozen features of the "
                   "labelled images first (LP-FT); small: the release's head x0.001; auto: "
                   "probe for a pre-trained encoder with at most 1,000 labelled images per "
                   "class and a pooled head, else small (keras_conmim.finetune_budget."
                   "head_init; the flatten head measured better small)")
    p.add_argument("--probe-weight-decay", type=cli.probe_weight_decay, default="cv",
                   help="the LP-FT probe's weight decay: cv (picked by 4-fold cross-validation "
                   "on the labelled images, keras_conmim.evaluation.select_weight_decay) or a "
                   "number >= 0")
    # The recipe: None = the preset's fine-tuning recipe (presets.py), or a
    # --config file's value, printed with where each value came from.
    p.add_argument("--config", default=None,
                   help="a YAML or JSON file with any of the recipe values below (--epochs ... "
                   "--pooling, underscores for dashes); flags override it")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--steps-per-epoch", type=int, default=None, help="default: one pass")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--min-lr", type=float, default=None)
    p.add_argument("--warmup-epochs", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--layer-decay", type=float, default=None)
    p.add_argument("--drop-path", type=float, default=None)
    p.add_argument("--label-smoothing", type=float, default=None)
    p.add_argument("--mixup", type=float, default=None, help="MixUp alpha (0: off)")
    p.add_argument("--cutmix", type=float, default=None, help="CutMix factor (0: off)")
    p.add_argument("--randaugment-ops", type=int, default=None, help="0: off")
    p.add_argument("--randaugment-factor", type=float, default=None)
    p.add_argument("--random-erasing", type=float, default=None,
                   help="probability of erasing a random rectangle of each image (0: off)")
    p.add_argument("--crop", choices=CROPS, default=None,
                   help="train-time crop: pad (a random window of the image zero-padded by "
                   "--crop-padding px), resized (random resized crop, area --crop-scale-min to "
                   "1), none; auto: the release's rule, pad at 32 px or less, else resized "
                   "(then test images are center-cropped at 0.875)")
    p.add_argument("--crop-padding", type=int, default=None, help="pixels, for --crop pad")
    p.add_argument("--crop-scale-min", type=float, default=None,
                   help="smallest crop area, for --crop resized")
    p.add_argument("--flip", type=float, default=None,
                   help="horizontal flip probability at train time (0: off)")
    p.add_argument("--pooling", choices=POOLINGS, default=None,
                   help="what the head sees: mean of the patch tokens (the release), the CLS "
                   "token, the patch tokens flattened in grid order (keeps where each "
                   "patch is), or the mean and the flattened tokens concatenated")
    p.add_argument("--output", default=os.path.join(ROOT, "saved_models", "classifier.keras"))
    p.add_argument("--checkpoint-dir", default=None,
                   help="where each epoch's checkpoint goes (default: --output without .keras, "
                   "plus .checkpoints); removed once the run has saved --output")
    p.add_argument("--jit-compile", choices=("auto", "on", "off"), default="auto",
                   help="compile the step (XLA on JAX / TensorFlow, torch.compile on torch); "
                   "auto: XLA on JAX, and on TensorFlow and torch only with a GPU")
    p.add_argument("--no-resume", action="store_true",
                   help="start over even if --checkpoint-dir holds a checkpoint of this run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results-json", default=None,
                   help="also write the result here: test top-1 %%, the resolved recipe with each "
                   "value's source, the head, the command (what benchmarks read)")
    args = p.parse_args(argv)
    try:
        cli.check_encoder(args)
        cli.check_at_least_one(args, ("epochs", "batch_size", "labels_per_class"))
    except ConfigError as e:
        p.error(str(e))
    if args.min_steps is not None and args.min_steps < 0:
        p.error("--min-steps must be >= 0")
    if args.ramp_start_steps is not None:
        try:
            check_ramp_start(args.ramp_start_steps)
        except ValueError as err:
            p.error(f"--ramp-start-steps {args.ramp_start_steps}: {err}")
    if args.lr is not None and args.lr <= 0:
        p.error("--lr must be > 0")
    if args.random_erasing is not None and not 0 <= args.random_erasing <= 1:
        p.error(f"--random-erasing {args.random_erasing}: a probability, in [0, 1]")
    if args.layer_decay is not None and not 0 < args.layer_decay <= 1:
        p.error(f"--layer-decay {args.layer_decay}: must be in (0, 1]")
    try:
        given = {"padding": args.crop_padding, "scale_min": args.crop_scale_min,
                 "flip": args.flip}  # the ones not given are the recipe's, checked there
        check_geometry(**{k: v for k, v in given.items() if v is not None})
    except ValueError as e:
        p.error(str(e))
    if not args.output.endswith(".keras"):
        p.error(f"--output {args.output}: must end in .keras")
    if args.checkpoint_dir is None:
        args.checkpoint_dir = args.output[:-len(".keras")] + ".checkpoints"
    return args


from keras_conmim.finetune_run import (  # noqa: E402,F401  (re-exported for callers)
    ADDED_SINCE, FINETUNE_KEYS, GEOMETRY_STREAM, LEGACY_RUN_FILE, FinetuneRecipe, check_resume,
    load_splits, make_batches, preset_for, recipe_for, remove_checkpoints, resolve_recipe,
    run_settings, write_results, write_run_file,
)


def recipe_of(args, preset, num_labelled=None):
    """`(FinetuneRecipe, sources, text)` for these flags (`resolve_recipe`)."""
    from_file = read_config_file(args.config, FINETUNE_KEYS) if args.config else {}
    return resolve_recipe(
        preset, from_scratch=args.from_scratch,
        flags={key: getattr(args, key) for key in FINETUNE_KEYS}, from_file=from_file,
        num_labelled=num_labelled, fixed=args.fixed_recipe, min_steps=args.min_steps,
        steps_per_epoch=args.steps_per_epoch, ramp_start=args.ramp_start_steps)


def main(argv=None):
    args = parse_args(argv)
    cli.use_backend(args.backend)
    import keras
    import numpy as np

    import keras_conmim as kc
    from keras_conmim import finetune_budget
    from keras_conmim.atomic import save_atomic
    from keras_conmim.callbacks import Checkpointer, resume_from_checkpoint
    from keras_conmim.classifier import ViTClassifier, finetune_encoder
    from keras_conmim.errors import ConfigError
    from keras_conmim.train_step import jit_compile_for

    keras.utils.set_random_seed(args.seed)
    encoder = cli.load_start(args)
    preset = args.preset or preset_for(encoder.get_config())
    recipe, _, _ = recipe_of(args, preset)  # the crop decides how test images load
    splits = load_splits(args.data, encoder.image_shape, crop=recipe.crop,
                         test_spec=args.test_data, seed=args.seed)
    train, test = splits.train, splits.test
    print("\n".join(splits.describe()), flush=True)
    if args.labels_per_class is not None:
        try:
            train = train.labelled_subset(args.labels_per_class, seed=args.seed)
        except ValueError as e:
            raise ConfigError(f"--labels-per-class: {e}") from None
    recipe, sources, text = recipe_of(args, preset, len(train))
    print(text, flush=True)
    settings = run_settings(args, recipe)
    resumed = check_resume(args.checkpoint_dir, settings, args.no_resume)
    encoder = finetune_encoder(encoder, drop_path_rate=recipe.drop_path)
    num_classes = len(splits.class_names)
    model = ViTClassifier(encoder, num_classes, pooling=recipe.pooling,
                          class_names=splits.class_names)

    head_init = args.head_init if args.head_init != "auto" else finetune_budget.head_init(
        not args.from_scratch, len(train), num_classes, recipe.pooling)
    if resumed is not None:
        head = resumed.get("head")  # the checkpoint holds the head; no probe to fit again
    elif head_init == "probe":
        accuracy, weight_decay = model.init_head_from_probe(
            train.images, train.labels, weight_decay=args.probe_weight_decay, seed=args.seed)
        how = "by cross-validation" if args.probe_weight_decay == "cv" else "<- flag"
        head = (f"linear probe on the frozen features of the {len(train)} labelled images "
                f"(LP-FT, weight decay {weight_decay:g} {how}), train accuracy "
                f"{100 * accuracy:.2f}%")
    else:
        head = "initialised x0.001 (the release's)"
    print(f"head: {head}", flush=True)

    steps = args.steps_per_epoch or train.steps_per_epoch(recipe.batch_size)
    total = steps * recipe.epochs
    schedule = kc.warmup_cosine(recipe.lr, total, recipe.warmup_epochs * steps, recipe.min_lr)
    optimizer = kc.LayerDecayAdamW(
        lr_scales=kc.layer_decay_scales(encoder, recipe.layer_decay), learning_rate=schedule,
        weight_decay=recipe.weight_decay, beta_1=0.9, beta_2=0.999)
    optimizer.exclude_from_weight_decay(var_list=model.no_weight_decay_variables())
    model.compile(optimizer=optimizer,
                  loss=keras.losses.CategoricalCrossentropy(
                      from_logits=True, label_smoothing=recipe.label_smoothing),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
                  jit_compile=jit_compile_for(args.jit_compile))
    start = "random init" if args.from_scratch else args.encoder
    print(f"fine-tuning from {start}: backend={args.backend} train={len(train)}"
          f"{'' if args.labels_per_class is None else f' ({args.labels_per_class} per class)'} "
          f"test={len(test)} "
          f"classes={num_classes} epochs={recipe.epochs} steps/epoch={steps}", flush=True)
    first_epoch = 0
    if resumed is not None:
        path, done = resume_from_checkpoint(
            model, args.checkpoint_dir, sample=np.zeros((1, *encoder.image_shape), "float32"))
        first_epoch = min(done // steps, recipe.epochs)
        print(f"resumed from {path}: {first_epoch} of {recipe.epochs} epochs done", flush=True)
    write_run_file(args.checkpoint_dir, settings, sources, head, saved=resumed,
                   step=first_epoch * steps)
    model.fit(make_batches(train, num_classes, recipe, seed=args.seed,
                           first_step=first_epoch * steps, steps_per_epoch=steps),
              epochs=recipe.epochs, initial_epoch=first_epoch, steps_per_epoch=steps, verbose=1,
              callbacks=[Checkpointer(args.checkpoint_dir, keep=2)])
    logits = model.predict(test.images.astype("float32"), batch_size=256, verbose=0)
    top1 = float(np.mean(np.argmax(logits, 1) == test.labels))
    save_atomic(model, args.output)
    remove_checkpoints(args.checkpoint_dir)  # the run is whole in --output
    if args.results_json:
        write_results(args.results_json,
                      dict(top1=round(100 * top1, 2), test_images=len(test),
                           train_images=len(train), steps_per_epoch=steps, head=head,
                           resumed_after_epoch=first_epoch, data=args.data,
                           test_data=splits.test_from, class_names=list(splits.class_names),
                           skipped=splits.skipped_counts()),
                      recipe, sources,
                      ["recipes/finetune.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"done: test top-1 {100 * top1:.2f}% on {len(test)} images of {num_classes} classes "
          f"({', '.join(splits.class_names)}), saved to {args.output}")
    return top1


if __name__ == "__main__":
    recipe_main.run(main)
