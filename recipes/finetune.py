"""Fine-tune a pre-trained encoder into a classifier (the release's recipe,
scaled to the run), or train the same classifier from scratch.

    python recipes/finetune.py            # the shipped backbone (preset conmim_vit_mini_p4_28_fmnist), packaged data
    python recipes/finetune.py --encoder saved_models/teacher_encoder.keras --output runs/ft
    python recipes/finetune.py --from-scratch --preset vit_mini_p4_28
    python recipes/finetune.py --data idx:/usr/share/datasets/fashion-mnist --labels-per-class 100
    python recipes/finetune.py --data dir:photos/train --test-data dir:photos/test   # PATH/<class>/*.jpg

Unset recipe values come from the preset's recipe (`["finetune"]`, or
`["scratch"]` with --from-scratch), scaled to the run by
`keras_conmim.downstream.finetune_budget` (--fixed-recipe: as written; a flag is never
scaled); every value is printed with its source. --output is the run's folder
(`keras_conmim.runs.Run`): `classifier.keras`, `config.json`, `log.csv`,
`results.json`, `checkpoints/` while it trains. The same command resumes a
stopped run; --no-resume (or a finished run there) moves the old files to
`previous_runs/<time>/`; a folder in use is refused. docs/finetuning.md.
"""

import argparse
import sys

import recipe_main  # stdlib only: chooses the backend before Keras loads

if __name__ == "__main__":
    recipe_main.choose_backend()
from keras_conmim.runs import cli  # noqa: E402  (after choosing the backend)
from keras_conmim.downstream.finetune_budget import check_ramp_start  # noqa: E402
from keras_conmim.runs.finetuning import (  # noqa: E402
    FINETUNE_KEYS, FinetuneRecipe, load_splits, make_batches, preset_for,
    resolve_recipe, run_settings)
from keras_conmim.runs.config import add_recipe_flags, check_recipe_flags, read_config_file  # noqa: E402,E501


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_encoder(p)
    cli.add_backend(p)
    cli.add_data(p)
    add = p.add_argument
    add("--labels-per-class", type=int, default=None, help="fine-tune on N labelled images per "
        "class (class-balanced, seeded by --seed); default: every training image")
    add("--min-steps", type=int, default=None, help="few labels: raise the epochs until the run "
        "has this many steps (default finetune_budget.MIN_STEPS; 0: off)")
    add("--ramp-start-steps", type=int, default=None, help="the optimizer steps up to which "
        "MixUp, CutMix, RandAugment, drop path, random erasing, crop and flip are off (default "
        "finetune_budget.SHORT_STEPS)")
    add("--fixed-recipe", action="store_true", help="the preset's recipe, unscaled")
    add("--head-init", choices=("auto", "probe", "small"), default="auto", help="probe: a "
        "linear probe on the frozen features first (LP-FT); small: the release's head x0.001; "
        "auto: finetune_budget.head_init")
    add("--probe-weight-decay", type=cli.probe_weight_decay, default="cv", help="the LP-FT "
        "probe's weight decay: cv (4-fold cross-validation) or a number >= 0")
    add("--config", default=None, help="a YAML or JSON file of recipe values (underscores for "
        "dashes); flags override it")
    add("--steps-per-epoch", type=int, default=None, help="default: one pass")
    add("--output", default="runs/finetune", help="the run's folder")
    add("--jit-compile", choices=("auto", "on", "off"), default="auto", help="compile the step")
    add("--no-resume", action="store_true", help="start over, moving a stopped run aside")
    add("--seed", type=int, default=0)
    add("--results-json", default=None, help="also write results.json's content here")
    add_recipe_flags(p, FinetuneRecipe)
    args = p.parse_args(argv)
    cli.check_encoder(args)
    cli.check_at_least_one(args, ("epochs", "batch_size", "labels_per_class"))
    check_recipe_flags(args, FinetuneRecipe, p)
    if args.min_steps is not None and args.min_steps < 0:
        p.error("--min-steps must be >= 0")
    if args.ramp_start_steps is not None:
        try:
            check_ramp_start(args.ramp_start_steps)
        except ValueError as err:
            p.error(f"--ramp-start-steps {args.ramp_start_steps}: {err}")
    if args.output.endswith(".keras"):
        p.error(f"--output {args.output}: the run's folder, which will hold classifier.keras "
                f"(pass --output {args.output[:-len('.keras')]})")
    return args


def recipe_of(args, preset, num_labelled=None):
    """`(FinetuneRecipe, sources, text)` for these flags (`resolve_recipe`)."""
    from_file = read_config_file(args.config, FINETUNE_KEYS) if args.config else {}
    return resolve_recipe(
        preset, from_scratch=args.from_scratch,
        flags={key: getattr(args, key) for key in FINETUNE_KEYS}, from_file=from_file,
        num_labelled=num_labelled, fixed=args.fixed_recipe, min_steps=args.min_steps,
        steps_per_epoch=args.steps_per_epoch, ramp_start=args.ramp_start_steps)


def main(argv=None):
    command = ["recipes/finetune.py", *(sys.argv[1:] if argv is None else argv)]
    args = parse_args(argv)
    cli.use_backend(args.backend)
    import keras
    import numpy as np

    from keras_conmim.runs import finetuning as ft
    from keras_conmim.errors import ConfigError
    from keras_conmim.runs import Run

    keras.utils.set_random_seed(args.seed)
    encoder = cli.load_start(args)
    preset = args.preset or preset_for(encoder.get_config())
    recipe, _, _ = recipe_of(args, preset)  # the crop decides how test images load
    splits = load_splits(args.data, encoder.image_shape, crop=recipe.crop,
                         test_spec=args.test_data, seed=args.seed)
    print("\n".join(splits.describe()), flush=True)
    train, test, names = splits.train, splits.test, splits.class_names
    if args.labels_per_class is not None:
        try:
            train = train.labelled_subset(args.labels_per_class, seed=args.seed)
        except ValueError as e:
            raise ConfigError(f"--labels-per-class: {e}") from None
    recipe, sources, text = recipe_of(args, preset, len(train))
    print(text, flush=True)
    with Run(args.output, run_settings(args, recipe), sources, no_resume=args.no_resume,
             problems=ft.older_run_problems, log=lambda s: print(s, flush=True)) as run:
        model, head = ft.build_classifier(args, encoder, recipe, train, names,
                                          run.saved if run.resuming else None)
        print(f"head: {head}", flush=True)
        steps = args.steps_per_epoch or train.steps_per_epoch(recipe.batch_size)
        ft.compile_classifier(model, recipe, steps * recipe.epochs, steps, args.jit_compile)
        print(f"fine-tuning from {'random init' if args.from_scratch else args.encoder}: "
              f"backend={args.backend} train={len(train)}{per_class(args)} test={len(test)} "
              f"classes={len(names)} epochs={recipe.epochs} steps/epoch={steps}", flush=True)
        done = run.start(model, np.zeros((1, *encoder.image_shape), "float32"),
                         extra={"head": head, "command": command}) // steps * steps
        run.fit(model, make_batches(train, len(names), recipe, seed=args.seed, first_step=done,
                                    steps_per_epoch=steps),
                steps * recipe.epochs, steps, done, verbose=1)
        top1 = ft.test_top1(model, test)
        result = dict(top1=round(100 * top1, 2), test_images=len(test), train_images=len(train),
                      steps_per_epoch=steps, head=head, resumed_after_epoch=done // steps,
                      data=args.data, test_data=splits.test_from, class_names=list(names),
                      skipped=splits.skipped_counts(), recipe=recipe.as_dict(),
                      recipe_sources=sources, epochs=recipe.epochs, command=command)
        run.finish({"classifier.keras": model}, result)
    if args.results_json:
        ft.write_results(args.results_json, result)
    print(f"done: test top-1 {100 * top1:.2f}% on {len(test)} images of {len(names)} classes "
          f"({', '.join(names)}), classifier.keras in {args.output}")
    return top1


def per_class(args):  # the start line's note on a label subset
    return "" if args.labels_per_class is None else f" ({args.labels_per_class} per class)"


if __name__ == "__main__":
    recipe_main.run(main)
