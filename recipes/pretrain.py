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

import json
import os

import recipe_main  # stdlib only: chooses the backend before Keras loads

if __name__ == "__main__":
    recipe_main.choose_backend()

import keras  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from keras_conmim import callbacks as cb  # noqa: E402
from keras_conmim import distribute, run_folder as run  # noqa: E402
from keras_conmim.atomic import save_atomic, write_text_atomic  # noqa: E402
from keras_conmim.data import parse_data_spec  # noqa: E402
from keras_conmim.errors import ConfigError, DataError, ResumeError  # noqa: E402
from keras_conmim.pretrain_config import (  # noqa: E402
    OPTIONS, RECIPE_KEYS, RESUMABLE_CHANGES, build_model, check_resume, coerce, describe_recipe,
    resolve_config, validate, view_errors,
)
from keras_conmim.presets import PRESETS  # noqa: E402
from keras_conmim.train_step import jit_compile_for, torch_graph_breaks  # noqa: E402

__all__ = ["OPTIONS", "RECIPE_KEYS", "RESUMABLE_CHANGES", "build_model", "check_resume", "coerce",
           "describe_recipe", "load_source", "main", "resolve_config", "validate", "view_errors"]


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
    config, resume, sources = resolve_config(argv)
    if config["backend"] != keras.backend.backend():
        raise ConfigError(
            f"backend={config['backend']}: Keras is already running on "
            f"{keras.backend.backend()} in this process (the backend is fixed at the first "
            "`import keras`). Run the recipe as a command (it sets KERAS_BACKEND from --backend "
            "first), or set KERAS_BACKEND before importing keras_conmim.")
    resuming, saved = check_resume(config, resume)
    print(describe_recipe(config, sources), flush=True)
    print("resolved config:\n" + json.dumps(config, indent=2), flush=True)
    batch = config["batch_size"]
    try:  # device count and batch split: checked before anything compiles
        plan = distribute.data_parallel(config["distribute"])
        plan.check_batch(batch)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print(f"devices: {plan.describe(batch)}", flush=True)
    chief = plan.is_chief  # only one process writes files
    output = config["output"]
    ckpt_dir = os.path.join(output, run.CHECKPOINTS)

    keras.utils.set_random_seed(config["seed"])
    keras.config.set_dtype_policy(config["precision"])
    preset = PRESETS[config["preset"]]
    size = config["image_size"] or preset["config"]["image_shape"][0]
    channels = preset["config"]["image_shape"][-1]
    source = load_source(config, size, "rgb" if channels == 3 else "gray")
    steps = config["steps_per_epoch"] or source.steps_per_epoch(batch)

    # Everything that can fail on the inputs has been checked; nothing in
    # --output was touched until here.
    with plan.scope():
        model, path = cb.load_latest_checkpoint(ckpt_dir) if resuming else (None, None)
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
            model.jit_compile = jit_compile_for(config["jit_compile"])
            print(f"resuming from {path} at step {done}", flush=True)
    if chief:
        if not resuming:
            moved = run.move_aside(output)
            if moved:
                print(f"{output} held another run's files: moved them to {moved}", flush=True)
        os.makedirs(ckpt_dir, exist_ok=True)
        write_text_atomic(os.path.join(output, run.CONFIG), run.record(
            config, sources, saved, "resume" if resuming else "start", done, path))

    checkpointer = cb.Checkpointer(ckpt_dir, keep=config["keep_checkpoints"],
                                   every_n_steps=config["checkpoint_every"]) if chief else None
    scalars = cb.TrainingScalars(batch)
    callbacks = [cb.NaNGuard(checkpointer), scalars]
    if chief:
        callbacks += [checkpointer,
                      keras.callbacks.CSVLogger(os.path.join(output, "log.csv"), append=done > 0),
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
    try:
        # A run resumed mid-epoch first finishes that epoch, then the rest.
        epoch, offset = divmod(done, steps)
        while epoch < config["epochs"]:
            run_steps = steps - offset
            part = model.fit(
                source.dataset(plan.per_host_batch(batch), seed=config["seed"], start_step=done,
                               **plan.shard()),
                epochs=config["epochs"] if offset == 0 else epoch + 1,
                initial_epoch=epoch, steps_per_epoch=run_steps,
                callbacks=callbacks, shuffle=False, verbose=1)
            for k, v in part.history.items():
                history.setdefault(k, []).extend(v)
            before, done = done, int(keras.ops.convert_to_numpy(model.step_counter))
            if done == before or model.stop_training:
                break  # a callback stopped the run
            epoch, offset = divmod(done, steps)
    except cb.NonFiniteLossError as e:
        raise cb.NonFiniteLossError(
            f"{e}\nWith this recipe: resuming as is repeats the same steps. Start over "
            "with other settings (a lower --lr, --clip-norm 1.0, --precision float32) and "
            f"--no-resume: this run is then moved to {os.path.join(output, run.PREVIOUS)}/, "
            "not deleted.") from None

    for name, obj in (("conmim", model), ("teacher_encoder", model.teacher_encoder),
                      ("student_encoder", model.encoder)):
        if chief:
            save_atomic(obj, os.path.join(output, f"{name}.keras"))
    if model.jit_compile and config["backend"] == "torch":
        breaks = torch_graph_breaks()
        print(f"torch.compile: {sum(breaks.values())} graph break(s)"
              + "".join(f"\n  {n} x {reason}" for reason, n in breaks.items()))
    if source.failed_files:
        print(f"skipped {len(source.failed_files)} image file(s) that could not be decoded "
              f"({source.failed_at_decode} reads), e.g. {', '.join(source.failed_files[:3])}")
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
            skipped_files=len(source.failed_files),
            history={k: [float(x) for x in v] for k, v in history.items()}), indent=2))
    print(f"done: {rate}, final loss {history['loss'][-1]:.4f}, lookup accuracy "
          f"{history['lookup_accuracy'][-1]:.4f} (chance {1 / model.encoder.num_patches:.4f}), "
          f"saved to {os.path.abspath(output)}")
    return model


if __name__ == "__main__":
    recipe_main.run(main)
