"""ConMIM pre-training, from the command line.

    python recipes/pretrain.py --backend jax
    python recipes/pretrain.py --backend torch --epochs 1 --steps-per-epoch 20
    python recipes/pretrain.py --config my_run.yaml --lr 1e-3      # flags override the file
    python recipes/pretrain.py --data dir:/photos --preset vit_tiny_p4_32 --precision mixed_bfloat16

Default data: the Fashion-MNIST slice shipped inside the package (4,000
images, 28 x 28 gray). In --output (default saved_models/) it writes:
`config.json` (the resolved config), `checkpoints/ckpt-<step>.keras` (the last
--keep-checkpoints, written atomically), `log.csv`, `tensorboard/` (when
TensorFlow is installed), `views/` (pictures of what the model is given), and
at the end `conmim.keras`, `teacher_encoder.keras`, `student_encoder.keras`
and `results.json` (the result, for scripts). Flags, config files and
recipes: docs/pretraining.md. Run it again with the same --output and it resumes from the newest
checkpoint, exactly where it stopped; a command whose settings differ from
the run's (other than where files go and how often) is refused, naming the
differences. `--no-resume` starts over, moving the run that was there to
`previous_runs/<time>/` inside --output (nothing is deleted). config.json is
the configuration that ran, with a history of its starts and resumes.
"""

import contextlib
import json
import os
import shlex
import sys

import recipe_main  # stdlib only: chooses the backend before Keras loads

if __name__ == "__main__":
    recipe_main.choose_backend()

import keras  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from keras_conmim import callbacks as cb  # noqa: E402
from keras_conmim import cli, distribute  # noqa: E402
from keras_conmim.runs import folder as run  # noqa: E402
from keras_conmim.atomic import save_atomic, write_text_atomic  # noqa: E402
from keras_conmim.data import parse_data_spec  # noqa: E402
from keras_conmim.errors import ConfigError, DataError, ResumeError, StorageError  # noqa: E402
from keras_conmim.pretrain_config import (  # noqa: E402
    OPTIONS, RECIPE_KEYS, RESUMABLE_CHANGES, build_model, check_resume, check_warmup_change,
    coerce, describe_recipe, image_shape_of, recovery_changes, resolve_config, validate,
    view_errors,
)
from keras_conmim.train_step import jit_compile_for, torch_graph_breaks  # noqa: E402

__all__ = ["OPTIONS", "RECIPE_KEYS", "RESUMABLE_CHANGES", "build_model", "check_resume", "coerce",
           "describe_recipe", "load_source", "main", "resolve_config", "train", "validate",
           "view_errors"]


def load_source(config, size, channels):
    """The --data source; DataError with what is wrong (before any file is
    written)."""
    spec = config["data"]
    try:
        source = parse_data_spec(spec, size, channels, resize=config["resize"],
                                 download=config["tfds_download"])
    except (ValueError, OSError, ImportError) as e:
        raise DataError(f"--data {spec}: {e}") from None
    batch = config["batch_size"]
    if batch > len(source):
        raise DataError(f"--batch-size {batch} is larger than the {len(source)} images "
                        f"of --data {spec}: use at most {len(source)}.")
    return source


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    config, resume, sources = resolve_config(argv)
    cli.use_backend(config["backend"])
    batch = config["batch_size"]
    try:  # device count and batch split: checked before anything compiles
        plan = distribute.data_parallel(config["distribute"])
        plan.check_batch(batch)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    # One run per folder: the process that writes files holds --output until
    # it ends (a second run into it is refused at once, naming this one).
    with run.hold(config["output"]) if plan.is_chief else contextlib.nullcontext():
        return train(config, resume, sources, plan, argv)


def go_on_command(argv, lr):
    """The command that resumes this run from its last good checkpoint with
    the learning rate `lr` (what the NaN message prints)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--lr", "--min-lr"):
            skip = True
        elif arg.startswith(("--lr=", "--min-lr=")) or arg == "--no-resume":
            continue
        else:
            kept.append(arg)
    return " ".join(["python recipes/pretrain.py", *map(shlex.quote, kept), "--lr", f"{lr:g}"])


def restore(config, steps, folder):
    """`(model, checkpoint)`: a fresh model and optimizer from `config` (its lr,
    clipping, precision) holding the weights, optimizer state, step and RNG
    state of the newest checkpoint in `folder` that loads with finite values
    (`callbacks.resume_from_checkpoint`, which raises ResumeError when none does)."""
    model = build_model(config, steps)
    path, _ = cb.resume_from_checkpoint(model, folder,
                                        moved_to=os.path.join(config["output"], run.PREVIOUS))
    return model, path


def train(config, resume, sources, plan, argv=()):
    """The run, once --output is this process's (`main`)."""
    resuming, saved = check_resume(config, resume)
    print(describe_recipe(config, sources), flush=True)
    print("resolved config:\n" + json.dumps(config, indent=2), flush=True)
    batch = config["batch_size"]
    print(f"devices: {plan.describe(batch)}", flush=True)
    chief = plan.is_chief  # only one process writes files
    output = config["output"]
    ckpt_dir = os.path.join(output, run.CHECKPOINTS)
    if chief:
        check_writable(output)

    keras.utils.set_random_seed(config["seed"])
    keras.config.set_dtype_policy(config["precision"])
    size, _, channels = image_shape_of(config)
    source = load_source(config, size, "rgb" if channels == 3 else "gray")
    steps = config["steps_per_epoch"] or source.steps_per_epoch(batch)

    # Everything that can fail on the inputs has been checked; nothing in
    # --output was touched until here.
    changes = recovery_changes(saved, config) if resuming else {}
    events = list((saved or {}).get("nan_rollbacks", [])) if resuming else []
    with plan.scope():
        model, path = None, None
        if resuming and changes:
            # Climbing out of a NaN: the checkpoint goes on with the new values
            # (scaled as the run's earlier rollbacks scaled them).
            model, path = restore(rolled_back(config, len(events)), steps, ckpt_dir)
        elif resuming:
            model, path = cb.load_latest_checkpoint(ckpt_dir)
        if resuming and model is None:
            raise ResumeError(f"no checkpoint in {ckpt_dir} loads with finite weights "
                              "(see the warnings above). Start over with --no-resume (the run "
                              f"is moved to {os.path.join(output, run.PREVIOUS)}/, not deleted).")
        if model is None:
            try:
                model = build_model(config, steps)
            except ValueError as e:
                raise ConfigError(f"invalid configuration: {e}") from None
            done = 0
        else:
            done = int(keras.ops.convert_to_numpy(model.step_counter))
            check_warmup_change(saved, config, done, steps)
            model.jit_compile = jit_compile_for(config["jit_compile"])
            print(f"resuming from {path} at step {done}", flush=True)
            for key, (old, new) in changes.items():
                print(f"  {key}: {old} -> {new} from step {done} (the schedule keeps its shape: "
                      "the same warm-up + cosine over the same steps, new peak and floor)",
                      flush=True)
    if chief:
        if not resuming:
            moved = run.move_aside(output)
            if moved:
                print(f"{output} held another run's files: moved them to {moved}", flush=True)
        os.makedirs(ckpt_dir, exist_ok=True)
        write_text_atomic(os.path.join(output, run.CONFIG), run.record(
            config, sources, saved, "resume" if resuming else "start", done, path,
            extra={"nan_rollbacks": events} if events else None))

    checkpointer = cb.Checkpointer(ckpt_dir, keep=config["keep_checkpoints"],
                                   every_n_steps=config["checkpoint_every"]) if chief else None
    rollbacks = cb.RollbackCount()
    callbacks = [cb.NaNGuard(checkpointer), cb.TrainingScalars(batch), rollbacks]
    if chief:
        callbacks += [checkpointer,
                      # append: a fresh run's old log.csv was moved aside, and a write that
                      # fails (a full disk) never truncates the rows already there
                      keras.callbacks.CSVLogger(os.path.join(output, "log.csv"), append=True),
                      cb.ViewGrid(source.batch(np.arange(min(8, len(source)))),
                                  os.path.join(output, "views"),
                                  every_n_epochs=config["view_grid_every"],
                                  log_dir=os.path.join(output, "tensorboard"))]
        try:
            import tensorboard  # noqa: F401
            import tensorflow  # noqa: F401  (TensorBoard writes through tf.summary)
            callbacks.append(keras.callbacks.TensorBoard(os.path.join(output, "tensorboard")))
        except ImportError:
            print("TensorFlow/TensorBoard not installed: no TensorBoard logs "
                  "(log.csv has the same scalars)")

    print(f"ConMIM pre-training: backend={config['backend']} preset={config['preset']} "
          f"mask={config['mask']} precision={config['precision']} "
          f"jit_compile={model.jit_compile} images={len(source)} "
          f"batch={batch} epochs={config['epochs']} steps/epoch={steps}", flush=True)
    history = {}
    rollbacks.count = len(events)
    try:
        model, done = train_loop(model, source, config, sources, plan, steps, done, callbacks,
                                 history, events, rollbacks, argv)
        for name, obj in (("conmim", model), ("teacher_encoder", model.teacher_encoder),
                          ("student_encoder", model.encoder)):
            if chief:
                save_atomic(obj, os.path.join(output, f"{name}.keras"))
    except OSError as e:
        last = (cb.list_checkpoints(ckpt_dir) or [None])[-1]
        raise StorageError(
            f"--output {output}: a write failed ({e.strerror or e}: {e.filename or ''}); the run "
            f"stopped. Last good checkpoint: {last or 'none written yet'}; nothing half-written "
            "is left. Free space (or fix the folder) and run the same command: it resumes "
            "there.") from None
    if model.jit_compile and config["backend"] == "torch":
        breaks = torch_graph_breaks()
        print(f"torch.compile: {sum(breaks.values())} graph break(s)"
              + "".join(f"\n  {n} x {reason}" for reason, n in breaks.items()))
    skipped = skipped_files(source)
    if skipped:
        print(f"skipped {len(skipped)} image file(s) that could not be read "
              f"({source.failed_at_decode} failed reads at decode time): "
              f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}")
    if not history:
        print(f"done: nothing left to train, the run in {os.path.abspath(output)} already "
              f"completed its {config['epochs']} epochs (step {done}); final models re-written. "
              "To train longer, start a new run (--no-resume or another --output).")
        return model
    rates = [r for r in history.get("images_per_second", []) if np.isfinite(r)]
    rate = f"{rates[-1]:.1f} images/s" if rates else "too few steps to time"
    if chief:  # what scripts read (bench/), beside the logs people read
        write_text_atomic(os.path.join(output, run.RESULTS), json.dumps(dict(
            step=done, epochs=config["epochs"], final_loss=float(history["loss"][-1]),
            lookup_accuracy=float(history["lookup_accuracy"][-1]),
            chance=1 / model.encoder.num_patches,
            images_per_second=float(rates[-1]) if rates else None,
            skipped_files=len(skipped), skipped=skipped, nan_rollbacks=events,
            history={k: [float(x) for x in v] for k, v in history.items()}), indent=2))
    print(f"done: {rate}, final loss {history['loss'][-1]:.4f}, lookup accuracy "
          f"{history['lookup_accuracy'][-1]:.4f} (chance {1 / model.encoder.num_patches:.4f}), "
          f"{len(events)} NaN rollback(s), saved to {os.path.abspath(output)}")
    return model


def train_loop(model, source, config, sources, plan, steps, done, callbacks, history, events,
               rollbacks, argv):
    """fit to the end of the run; with --on-nan rollback, a NaN rolls back to
    the last good checkpoint (the batches since it skipped, the lr scaled
    down) at most --max-rollbacks times. Returns (model, step reached)."""
    output = config["output"]
    ckpt_dir = os.path.join(output, run.CHECKPOINTS)
    while True:
        try:
            done = fit_epochs(model, source, config, plan, steps, done, callbacks, history)
            break
        except cb.NonFiniteLossError as e:
            last = (cb.list_checkpoints(ckpt_dir) or [None])[-1]
            if config["on_nan"] != "rollback" or len(events) >= config["max_rollbacks"] \
                    or last is None:
                raise nan_error(e, config, argv, output, len(events), last) from None
            # Roll back: the last good checkpoint, the batches since it skipped,
            # the lr (and its floor) scaled down once more.
            factor = config["rollback_lr_factor"]
            scaled = rolled_back(config, len(events) + 1)
            with plan.scope():
                model, last = restore(scaled, steps, ckpt_dir)
                model.jit_compile = jit_compile_for(config["jit_compile"])
            restored = int(keras.ops.convert_to_numpy(model.step_counter))
            model.step_counter.assign(e.step)
            model.optimizer.iterations.assign(e.step)
            event = {"nan_step": e.step - 1, "checkpoint": os.path.basename(last),
                     "skipped_steps": [restored, e.step], "lr": scaled["lr"],
                     "min_lr": scaled["min_lr"]}
            events.append(event)
            rollbacks.count = len(events)
            print(f"rollback {len(events)}/{config['max_rollbacks']}: NaN at step "
                  f"{e.step - 1}; back to {last} (step {restored}), steps {restored}-"
                  f"{e.step - 1} skipped, lr x{factor:g} -> {scaled['lr']:g}", flush=True)
            if plan.is_chief:
                saved = run.read_config(output)
                write_text_atomic(os.path.join(output, run.CONFIG), run.record(
                    config, sources, saved, "rollback", e.step, last,
                    extra={"nan_rollbacks": events}))
            done = e.step

    return model, done


def rolled_back(config, times):
    """`config` with lr and min_lr scaled by rollback_lr_factor ** times: what
    a run that rolled back `times` times trains with (a resume keeps it)."""
    scale = config["rollback_lr_factor"] ** times
    return {**config, "lr": config["lr"] * scale, "min_lr": config["min_lr"] * scale}


def fit_epochs(model, source, config, plan, steps, done, callbacks, history):
    """Train from step `done` to the end of the run (a run resumed mid-epoch
    first finishes that epoch); the history grows in place. Returns the
    step reached."""
    epoch, offset = divmod(done, steps)
    while epoch < config["epochs"]:
        part = model.fit(
            source.dataset(plan.per_host_batch(config["batch_size"]), seed=config["seed"],
                           start_step=done, **plan.shard()),
            epochs=config["epochs"] if offset == 0 else epoch + 1,
            initial_epoch=epoch, steps_per_epoch=steps - offset,
            callbacks=callbacks, shuffle=False, verbose=1)
        for k, v in part.history.items():
            history.setdefault(k, []).extend(v)
        before, done = done, int(keras.ops.convert_to_numpy(model.step_counter))
        if done == before or model.stop_training:
            break  # a callback stopped the run
        epoch, offset = divmod(done, steps)
    return done


def nan_error(error, config, argv, output, rolled_back, last):
    """The one-line-per-fact NaN error: what happened and the exact command
    that goes on from the last good checkpoint with a lower lr."""
    text = str(error)
    if config["on_nan"] == "rollback" and last:
        text += (f"\n--on-nan rollback: rolled back {rolled_back} time(s), the most "
                 f"--max-rollbacks {config['max_rollbacks']} allows.")
    if last:
        text += ("\nGo on from that checkpoint with a lower learning rate (the schedule keeps "
                 f"its shape; --clip-norm 1.0 may be added the same way):\n  "
                 f"{go_on_command(argv, config['lr'] / 10)}")
        if config["on_nan"] != "rollback":  # never advise what the command already does
            text += "\nor let the run do it by itself: add --on-nan rollback."
    else:
        text += (f"\nNo checkpoint was written before the NaN: start over with a lower --lr and "
                 f"--no-resume (this run is moved to {os.path.join(output, run.PREVIOUS)}/, "
                 "not deleted).")
    return cb.NonFiniteLossError(text)


def check_writable(output):
    """--output can take files (the run holds its lock there already); a
    ConfigError naming the problem otherwise, before training."""
    probe = os.path.join(output, f".write-test.{os.getpid()}")
    try:
        with open(probe, "w") as f:
            f.write("x" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise ConfigError(f"--output {output}: cannot write there ({e.strerror or e}). Pass a "
                          "folder you can write, with free space.") from None
    finally:
        if os.path.exists(probe):
            os.remove(probe)


def skipped_files(source):
    """Every file the source skipped: at listing (not images, empty) and at
    decode time."""
    listed = list(source.skipped)
    return listed + [f for f in source.failed_files if f not in listed]


if __name__ == "__main__":
    recipe_main.run(main)
