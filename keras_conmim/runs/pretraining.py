"""A ConMIM pre-training run on the run engine (`runs.Run`): what
`recipes/pretrain.py` does after resolving its flags, usable from Python
with the same promises (a notebook gets the same resume and NaN behaviour):

    from keras_conmim.runs.pretrain_config import resolve_config
    from keras_conmim.runs.pretraining import pretrain
    config, resume, sources = resolve_config(["--epochs", "2", "--output", "runs/p"])
    model = pretrain(config, resume, sources)

In `config["output"]`: config.json, `checkpoints/ckpt-<step>.keras` (the
initial state `ckpt-00000000` is always kept: the start a NaN can step back
to), log.csv, tensorboard/, views/, and at the end conmim.keras,
teacher_encoder.keras, student_encoder.keras and results.json.

**NaN policy.** `on_nan="stop"` ends the run with a message naming the last
good checkpoint and the exact command that goes on from it with a lower lr;
`"rollback"` does that by itself (at most `max_rollbacks` times). A NaN that
comes back after a recovery, before a new good checkpoint is written, steps
back: the checkpoint it went on from moves to `checkpoints/ruined/` (nothing
is deleted) and the next recovery goes to the one before, down to the
initial state. The lr proposed is a tenth of the run's, and never above the
preset's measured lr.
"""

import json
import os
import shlex

import keras
import numpy as np

from keras_conmim.models import callbacks as cb
from keras_conmim.models import distribute
from keras_conmim.atomic import save_atomic, write_text_atomic
from keras_conmim.data import parse_data_spec
from keras_conmim.errors import ConfigError, DataError, ResumeError, StorageError
from keras_conmim.presets import PRESETS
from keras_conmim.runs.pretrain_config import (
    RECOVERY_CHANGES, RESUMABLE_CHANGES, build_model, check_warmup_change, describe_recipe,
    image_shape_of, recovery_changes,
)
from keras_conmim.runs import folder as run_folder
from keras_conmim.runs.engine import Run
from keras_conmim.models.train_step import jit_compile_for, torch_graph_breaks

RUINED = "ruined"  # checkpoints/ruined/: finite checkpoints a NaN came back from
ADVICE = ("A resume may change only where files go and how often ({}) and, to climb out of a "
          "NaN, {}. Resume it with its own settings (its config.json lists them), or start a "
          "new run: add --no-resume (the run there is moved to previous_runs/, not deleted) or "
          "pass another --output.").format(", ".join(RESUMABLE_CHANGES),
                                           ", ".join(RECOVERY_CHANGES))


def lr_only_down(saved, config):
    """The pre-training resume rule beyond equality: the lr may go down (to
    climb out of a NaN), never up."""
    if isinstance(saved.get("lr"), (int, float)) and config["lr"] > saved["lr"]:
        return [f"lr: a resume may lower the learning rate to climb out of a NaN, not raise it "
                f"(this run's {saved['lr']}, this command's {config['lr']})"]
    return []


def pretrain(config, resume=True, sources=None, argv=()):
    """Run (or resume) the pre-training `config` describes (`pretrain_config.
    resolve_config`) in `config["output"]`; `argv`: the command line, for
    the command a NaN message prints. Returns the ConMIM model."""
    try:  # device count and batch split: checked before anything compiles
        plan = distribute.data_parallel(config["distribute"])
        plan.check_batch(config["batch_size"])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    run = Run(config["output"], config, sources, mutable=RESUMABLE_CHANGES + RECOVERY_CHANGES,
              no_resume=not resume, problems=lr_only_down, advice=ADVICE,
              log=lambda line: print(line, flush=True), chief=plan.is_chief)
    with run:
        return _train(run, config, sources or {}, plan, list(argv))


def _train(run, config, sources, plan, argv):
    print(describe_recipe(config, sources), flush=True)
    print("resolved config:\n" + json.dumps(config, indent=2), flush=True)
    batch = config["batch_size"]
    print(f"devices: {plan.describe(batch)}", flush=True)
    if run.chief:
        check_writable(run.folder)
    keras.utils.set_random_seed(config["seed"])
    keras.config.set_dtype_policy(config["precision"])
    size, _, channels = image_shape_of(config)
    source = load_source(config, size, "rgb" if channels == 3 else "gray")
    steps = config["steps_per_epoch"] or source.steps_per_epoch(batch)
    # Everything that can fail on the inputs has been checked; nothing in
    # --output was touched until here.
    saved = run.saved or {}
    events = list(saved.get("nan_rollbacks", [])) if run.resuming else []
    # a resume after a NaN stop is a recovery: its checkpoint is where it starts
    after_nan = run.resuming and (saved.get("history") or [{}])[-1].get("event") == "nan"
    with plan.scope():
        model, path, done = build_or_restore(run, config, steps, events)
    run.start(step=done, checkpoint=path, extra={"nan_rollbacks": events} if events else None)
    if run.chief and not run.resuming:  # ckpt-00000000: the initial state, kept to step back to
        initial = run.checkpointer()
        initial.set_model(model)
        initial.save()
    loop = NaNLoop(run, config, plan, steps, argv, events, path if after_nan else None)
    print(f"ConMIM pre-training: backend={config['backend']} preset={config['preset']} "
          f"mask={config['mask']} precision={config['precision']} "
          f"jit_compile={model.jit_compile} images={len(source)} "
          f"batch={batch} epochs={config['epochs']} steps/epoch={steps}", flush=True)
    try:
        model, done = loop.train(model, source, done, callbacks_for(run, config, source, loop))
        if run.chief:
            for name, obj in (("conmim", model), ("teacher_encoder", model.teacher_encoder),
                              ("student_encoder", model.encoder)):
                save_atomic(obj, os.path.join(run.folder, f"{name}.keras"))
    except OSError as e:
        last = (cb.list_checkpoints(run.checkpoints) or [None])[-1]
        raise StorageError(
            f"--output {run.folder}: a write failed ({e.strerror or e}: {e.filename or ''}); "
            f"the run stopped. Last good checkpoint: {last or 'none written yet'}; nothing "
            "half-written is left. Free space (or fix the folder) and run the same command: "
            "it resumes there.") from None
    report(run, config, model, source, done, loop)
    return model


def build_or_restore(run, config, steps, events):
    """`(model, checkpoint, step)`: a fresh model, or a resumed run's newest
    finite checkpoint (with the recovery changes of this command applied)."""
    if not run.resuming:
        try:
            return build_model(config, steps), None, 0
        except ValueError as e:
            raise ConfigError(f"invalid configuration: {e}") from None
    changes = recovery_changes(run.saved, config)
    if changes:
        # Climbing out of a NaN: the checkpoint goes on with the new values
        # (scaled as the run's earlier rollbacks scaled them).
        model, path = restore(rolled_back(config, len(events)), steps, run)
    else:
        model, path = cb.load_latest_checkpoint(run.checkpoints)
    if model is None:
        raise ResumeError(f"no checkpoint in {run.checkpoints} loads with finite weights "
                          "(see the warnings above). Start over with --no-resume (the run is "
                          f"moved to {run.previous_runs}/, not deleted).")
    done = int(keras.ops.convert_to_numpy(model.step_counter))
    check_warmup_change(run.saved, config, done, steps)
    model.jit_compile = jit_compile_for(config["jit_compile"])
    print(f"resuming from {path} at step {done}", flush=True)
    for key, (old, new) in changes.items():
        print(f"  {key}: {old} -> {new} from step {done} (the schedule keeps its shape: "
              "the same warm-up + cosine over the same steps, new peak and floor)", flush=True)
    return model, path, done


def callbacks_for(run, config, source, loop):
    """The NaN guard, the scalars, and (the process that writes) checkpoints,
    log.csv, the views and TensorBoard."""
    loop.checkpointer = run.checkpointer(
        keep=config["keep_checkpoints"], every_n_steps=config["checkpoint_every"],
        keep_first=True) if run.chief else None
    found = [cb.NaNGuard(loop.checkpointer), cb.TrainingScalars(config["batch_size"]),
             loop.rollbacks]
    if not run.chief:
        return found
    found += [loop.checkpointer, run.csv_log(),
              cb.ViewGrid(source.batch(np.arange(min(8, len(source)))),
                          os.path.join(run.folder, "views"),
                          every_n_epochs=config["view_grid_every"],
                          log_dir=os.path.join(run.folder, "tensorboard"))]
    try:
        import tensorboard  # noqa: F401
        import tensorflow  # noqa: F401  (TensorBoard writes through tf.summary)
        found.append(keras.callbacks.TensorBoard(os.path.join(run.folder, "tensorboard")))
    except ImportError:
        print("TensorFlow/TensorBoard not installed: no TensorBoard logs "
              "(log.csv has the same scalars)")
    return found


class NaNLoop:
    """fit to the end of the run under the NaN policy: `train` returns
    `(model, step reached)`, or raises the NaN message (`nan_error`).
    `recovered_from`: the checkpoint this process went on from after a NaN
    (a resume after a NaN stop, or a rollback): a NaN before a newer good
    checkpoint steps back past it (`step_back`)."""

    def __init__(self, run, config, plan, steps, argv, events, recovered_from=None):
        self.run, self.config, self.plan, self.steps, self.argv = run, config, plan, steps, argv
        self.events, self.recovered_from = events, recovered_from
        self.history, self.checkpointer = {}, None
        self.rollbacks = cb.RollbackCount()
        self.rollbacks.count = len(events)

    def train(self, model, source, done, callbacks):
        config = self.config
        while True:
            try:
                return model, fit_epochs(model, source, config, self.plan, self.steps, done,
                                         callbacks, self.history)
            except cb.NonFiniteLossError as e:
                last = self.good_checkpoint()
                if config["on_nan"] != "rollback" or len(self.events) >= \
                        config["max_rollbacks"] or last is None:
                    self.run.record("nan", e.step, last, extra={"nan_rollbacks": self.events})
                    raise nan_error(e, config, self.argv, self.run.folder, len(self.events),
                                    last) from None
                model, done = self.roll_back(e, last)

    def good_checkpoint(self):
        """The checkpoint the next recovery goes on from: the newest good one,
        stepping back past the one the last recovery started from when no
        newer one was written since (it leads to the NaN again)."""
        found = cb.list_checkpoints(self.run.checkpoints)
        last = found[-1] if found else None
        if last and last == self.recovered_from and cb.checkpoint_step(last) > 0:
            # the process that writes files moves it aside; the others read past it
            last = step_back(last) if self.run.chief else (found[-2] if len(found) > 1
                                                            else None)
        return last

    def roll_back(self, error, last):
        """Back to `last`, the batches since skipped, the lr scaled down once more."""
        config = self.config
        scaled = rolled_back(config, len(self.events) + 1)
        with self.plan.scope():
            model, last = restore(scaled, self.steps, self.run)
            model.jit_compile = jit_compile_for(config["jit_compile"])
        restored = int(keras.ops.convert_to_numpy(model.step_counter))
        step = max(error.step, restored)
        model.step_counter.assign(step)
        model.optimizer.iterations.assign(step)
        self.events.append({"nan_step": error.step - 1, "checkpoint": os.path.basename(last),
                            "skipped_steps": [restored, step], "lr": scaled["lr"],
                            "min_lr": scaled["min_lr"]})
        self.rollbacks.count = len(self.events)
        self.recovered_from = last
        if self.checkpointer is not None:
            self.checkpointer.last_path = None
        print(f"rollback {len(self.events)}/{config['max_rollbacks']}: NaN at step "
              f"{error.step - 1}; back to {last} (step {restored}), steps {restored}-"
              f"{step - 1} skipped, lr x{config['rollback_lr_factor']:g} -> "
              f"{scaled['lr']:g}", flush=True)
        self.run.record("rollback", error.step, last, extra={"nan_rollbacks": self.events})
        return model, step


def step_back(checkpoint):
    """Move `checkpoint` into `checkpoints/ruined/` (finite, but the NaN came
    back from it; nothing is deleted). Returns the newest checkpoint left."""
    folder = os.path.dirname(checkpoint)
    ruined = os.path.join(folder, RUINED)
    os.makedirs(ruined, exist_ok=True)
    os.replace(checkpoint, os.path.join(ruined, os.path.basename(checkpoint)))
    print(f"the NaN came back before a new checkpoint: {os.path.basename(checkpoint)} moved to "
          f"{ruined}/; stepping back", flush=True)
    found = cb.list_checkpoints(folder)
    return found[-1] if found else None


def report(run, config, model, source, done, loop):
    """The end of the run: graph breaks, skipped files, results.json, the last line."""
    history, events = loop.history, loop.events
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
        print(f"done: nothing left to train, the run in {os.path.abspath(run.folder)} already "
              f"completed its {config['epochs']} epochs (step {done}); final models re-written. "
              "To train longer, start a new run (--no-resume or another --output).")
        return
    rates = [r for r in history.get("images_per_second", []) if np.isfinite(r)]
    chance = 1 / model.encoder.num_patches
    if run.chief:  # what scripts read (bench/), beside the logs people read
        write_text_atomic(os.path.join(run.folder, run_folder.RESULTS), json.dumps(dict(
            step=done, epochs=config["epochs"], final_loss=float(history["loss"][-1]),
            lookup_accuracy=float(history["lookup_accuracy"][-1]), chance=chance,
            images_per_second=float(rates[-1]) if rates else None,
            skipped_files=len(skipped), skipped=skipped, nan_rollbacks=events,
            history={k: [float(x) for x in v] for k, v in history.items()}), indent=2))
    rate = f"{rates[-1]:.1f} images/s" if rates else "too few steps to time"
    print(f"done: {rate}, final loss {history['loss'][-1]:.4f}, lookup accuracy "
          f"{history['lookup_accuracy'][-1]:.4f} (chance {chance:.4f}), "
          f"{len(events)} NaN rollback(s), saved to {os.path.abspath(run.folder)}")


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


def next_lr(config):
    """The lr a recovery proposes: a tenth of the run's, never above the
    preset's measured one (a run far above it climbs out in one step)."""
    preset = PRESETS.get(config.get("preset"), {}).get("pretrain", {}).get("lr")
    lr = config["lr"] / 10
    return min(lr, preset) if preset else lr


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


def restore(config, steps, run):
    """`(model, checkpoint)`: a fresh model and optimizer from `config` (its lr,
    clipping, precision) holding the weights, optimizer state, step and RNG
    state of the newest checkpoint of `run` that loads with finite values."""
    model = build_model(config, steps)
    path, _ = run.restore(model)
    return model, path


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
        try:
            part = model.fit(
                source.dataset(plan.per_host_batch(config["batch_size"]), seed=config["seed"],
                               start_step=done, **plan.shard()),
                epochs=config["epochs"] if offset == 0 else epoch + 1,
                initial_epoch=epoch, steps_per_epoch=steps - offset,
                callbacks=callbacks, shuffle=False, verbose=1)
        except BaseException:
            cb.log_stopped_epoch(callbacks)  # the epoch it stopped inside gets its row too
            raise
        for k, v in part.history.items():
            history.setdefault(k, []).extend(v)
        before, done = done, int(keras.ops.convert_to_numpy(model.step_counter))
        if done == before or model.stop_training:
            break  # a callback stopped the run
        epoch, offset = divmod(done, steps)
    return done


def nan_error(error, config, argv, output, rolled_back, last):
    """The one-line-per-fact NaN error: what happened and the exact command
    that goes on from `last` (the checkpoint the next recovery uses) with a
    lower lr."""
    text = str(error)
    named = getattr(error, "checkpoint", None)
    if named and last and os.path.basename(named) != os.path.basename(last):
        text = text.replace(f"Last good checkpoint: {named}", (
            f"Last good checkpoint: {last} ({os.path.basename(named)} moved to "
            f"{RUINED}/: the NaN came back from it)"))
    if config["on_nan"] == "rollback" and last:
        text += (f"\n--on-nan rollback: rolled back {rolled_back} time(s), the most "
                 f"--max-rollbacks {config['max_rollbacks']} allows.")
    if last:
        start = " (the run's initial state: this starts it over)" \
            if cb.checkpoint_step(last) == 0 else ""
        text += (f"\nGo on from {last}{start} with a lower learning rate "
                 f"(the schedule keeps its shape; --clip-norm 1.0 may be added the same way):\n"
                 f"  {go_on_command(argv, next_lr(config))}")
        if config["on_nan"] != "rollback":  # never advise what the command already does
            text += "\nor let the run do it by itself: add --on-nan rollback."
    else:
        text += (f"\nNo checkpoint to go on from: start over with a lower --lr and "
                 f"--no-resume (this run is moved to {os.path.join(output, run_folder.PREVIOUS)}"
                 "/, not deleted).")
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
