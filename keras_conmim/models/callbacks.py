"""Callbacks for long pre-training runs: checkpoints, a NaN guard, extra
scalars, and a picture of what the model is given."""

import os
import re
import time
import warnings

import keras
import numpy as np

from keras_conmim.atomic import save_atomic
from keras_conmim.data.images import resize_image
from keras_conmim.models.distribute import this_host_only
from keras_conmim.errors import NonFiniteLossError, ResumeError

__all__ = ["Checkpointer", "NaNGuard", "NonFiniteLossError", "RollbackCount", "RunLog",
           "TrainingScalars", "ViewGrid", "log_stopped_epoch",
           "checkpoint_step", "list_checkpoints", "load_latest_checkpoint", "nonfinite_variables",
           "restore_latest_checkpoint", "resume_from_checkpoint"]

CHECKPOINT_PATTERN = re.compile(r"^ckpt-(\d{8})\.keras$")  # ckpt-<step>.keras


def _sync(model):
    # JAX keeps the training state outside the variables during an epoch.
    if hasattr(model, "jax_state_sync"):
        model.jax_state_sync()


def _step(model):
    # ConMIM counts its own steps (the EMA schedule reads them); any other
    # model is counted by its optimizer.
    counter = getattr(model, "step_counter", None)
    if counter is None:
        counter = model.optimizer.iterations
    return int(keras.ops.convert_to_numpy(counter))


def list_checkpoints(directory):
    """Checkpoint paths in `directory`, oldest first."""
    names = [n for n in os.listdir(directory) if CHECKPOINT_PATTERN.match(n)] \
        if os.path.isdir(directory) else []
    return [os.path.join(directory, n) for n in sorted(names)]


def checkpoint_step(path):
    """The step in a checkpoint's name (`ckpt-<step>.keras`)."""
    return int(CHECKPOINT_PATTERN.match(os.path.basename(path)).group(1))


def nonfinite_variables(model):
    """Paths of the variables of `model` (weights, optimizer state) that hold
    a NaN or an Inf: a model with any is no checkpoint to resume from."""
    variables = list(model.variables)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and getattr(optimizer, "built", False):
        variables += list(optimizer.variables)
    bad = []
    for v in variables:
        value = np.asarray(keras.ops.convert_to_numpy(v))
        if value.dtype.kind == "f" or value.dtype.name == "bfloat16":
            if not np.all(np.isfinite(value.astype("float32"))):
                bad.append(v.path)
    return bad


def _describe(paths, most=3):
    return f"{len(paths)} (e.g. {', '.join(paths[:most])})"


def _newest_that_loads(directory, load):
    """`(load(path), path)` for the newest checkpoint that `load` accepts and
    whose variables are all finite, or `(None, None)`. `load(path)` returns
    the model that now holds the checkpoint. One that fails to load (it
    cannot be half-written, but a disk can still corrupt it) or holds a NaN
    or Inf (written by an older version) is reported and the next older one
    is tried."""
    for path in reversed(list_checkpoints(directory)):
        try:
            model = load(path)
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"Could not load checkpoint {path} ({e}); trying an older one.",
                          stacklevel=3)
            continue
        bad = nonfinite_variables(model)
        if bad:
            warnings.warn(f"Skipping checkpoint {path}: {_describe(bad)} of its variables hold "
                          "NaN or Inf; trying an older one.", stacklevel=3)
            continue
        return model, path
    return None, None


def load_latest_checkpoint(directory):
    """`(model, path)` for the newest checkpoint that loads and is finite, or
    `(None, None)`."""
    return _newest_that_loads(directory, keras.saving.load_model)


def restore_latest_checkpoint(model, directory):
    """Load the newest checkpoint in `directory` that loads into `model` (built,
    with its optimizer built) by `model.load_weights`: weights and optimizer
    state, so a learning-rate schedule continues. Returns its path, or None
    when there is none; one that fails to load or holds a NaN / Inf is
    reported and the next older one is tried."""

    def load(path):
        model.load_weights(path)
        return model

    return _newest_that_loads(directory, load)[1]


def resume_from_checkpoint(model, directory, sample=None, moved_to=None):
    """Continue a stopped run in `model` (compiled): build it (on `sample`, one
    batch of inputs, when it is not built), build its optimizer, and load the
    newest checkpoint in `directory` that loads with finite values
    (`restore_latest_checkpoint`). Returns `(path, step)`, `step` the
    optimizer's count of updates done. Raises ResumeError naming the fix when
    no checkpoint loads (`moved_to`: where --no-resume puts the old run)."""
    if sample is not None:
        model(sample)
    model.optimizer.build(model.trainable_variables)
    path = restore_latest_checkpoint(model, directory)
    if path is None:
        aside = f" (the run is moved to {moved_to}/, not deleted)" if moved_to else ""
        raise ResumeError(f"no checkpoint in {directory} loads with finite weights (see the "
                          f"warnings above); start over with --no-resume{aside}.")
    return path, int(keras.ops.convert_to_numpy(model.optimizer.iterations))


class Checkpointer(keras.callbacks.Callback):
    """Saves the whole model (for ConMIM: student, teacher, heads, optimizer
    state, step counter, RNG state) at each epoch end and every `every_n_steps`
    steps, atomically, as `ckpt-<step>.keras`; keeps the last `keep`.

    Never saves a model whose last logged loss is NaN or Inf, nor one with a
    NaN or Inf in any variable (the update after the last finite loss can
    break the weights): that save is skipped with a warning, and `last_path`
    stays the newest checkpoint that is good. Rotation deletes only
    checkpoints older than the one just written, never a newer-numbered one
    (which can only belong to another run).
    """

    def __init__(self, directory, keep=3, every_n_steps=None, keep_first=False):
        super().__init__()
        if keep < 1:
            raise ValueError(f"keep must be >= 1, received {keep}.")
        self.directory = directory
        self.keep = keep
        self.keep_first = keep_first  # never rotate out ckpt-00000000, the run's initial state
        self.every_n_steps = every_n_steps
        self.last_path = None
        self._last_loss = None

    def on_train_begin(self, logs=None):
        # Temp files of a save that a kill interrupted; never loadable.
        if os.path.isdir(self.directory):
            for name in os.listdir(self.directory):
                if name.endswith(".partial.keras"):
                    os.remove(os.path.join(self.directory, name))

    def save(self):
        """Write `ckpt-<step>.keras` and rotate; returns its path, or None when
        the model holds a NaN / Inf (nothing is written then)."""
        _sync(self.model)
        step = _step(self.model)
        bad = nonfinite_variables(self.model)
        if bad:
            warnings.warn(f"Not saving a checkpoint at step {step}: {_describe(bad)} variables "
                          f"hold NaN or Inf. The newest good checkpoint is "
                          f"{self.last_good()}.", stacklevel=2)
            return None
        path = os.path.join(self.directory, f"ckpt-{step:08d}.keras")
        save_atomic(self.model, path)
        self.last_path = path
        ours = [p for p in list_checkpoints(self.directory) if checkpoint_step(p) <= step
                and not (self.keep_first and checkpoint_step(p) == 0 and step > 0)]
        for old in ours[: -self.keep]:
            os.remove(old)
        return path

    def last_good(self):
        """The checkpoint this run wrote last, else the newest in the folder
        (a resumed run's), else None: every checkpoint written is finite."""
        found = list_checkpoints(self.directory)
        return self.last_path or (found[-1] if found else None)

    def on_train_batch_end(self, batch, logs=None):
        self._last_loss = (logs or {}).get("loss", self._last_loss)
        if self.every_n_steps and _finite(self._last_loss):
            # Counted in batches of this fit() epoch: reading the model's step
            # counter every batch would force a JAX state sync.
            if (batch + 1) % self.every_n_steps == 0:
                self.save()

    def on_epoch_end(self, epoch, logs=None):
        if _finite((logs or {}).get("loss", self._last_loss)):
            self.save()


def _finite(value):
    if value is None:
        return True
    return bool(np.all(np.isfinite(np.asarray(keras.ops.convert_to_numpy(value), "float64"))))


class NaNGuard(keras.callbacks.Callback):
    """Stops training at the first NaN/Inf loss with a message that says what
    to try, raising `NonFiniteLossError` (its `step`: the model's step count
    after the bad batch; its `checkpoint`: the newest good checkpoint or
    None). Put it before `Checkpointer`."""

    def __init__(self, checkpointer=None):
        super().__init__()
        self.checkpointer = checkpointer

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not _finite(loss):
            self.model.stop_training = True
            _sync(self.model)
            step = _step(self.model)
            last = self.checkpointer.last_good() if self.checkpointer else None
            error = NonFiniteLossError(
                f"The loss became {float(np.asarray(keras.ops.convert_to_numpy(loss)))} at step "
                f"{step - 1} (batch {batch} of this epoch); training stopped. Last good "
                f"checkpoint: {last or 'none written yet'}. Check the input data for NaN/Inf, or "
                "try a lower --lr, --clip-norm 1.0, or --precision float32 / mixed_bfloat16 "
                "instead of mixed_float16.")
            error.step, error.checkpoint = step, last
            raise error


class RollbackCount(keras.callbacks.Callback):
    """Adds `nan_rollbacks` (how many times the run rolled back from a NaN so
    far) to the epoch logs, for the CSV log and TensorBoard. Put it before
    those loggers."""

    adds_to_epoch_logs = True  # RunLog's row of a stopped epoch asks it too

    def __init__(self):
        super().__init__()
        self.count = 0

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["nan_rollbacks"] = self.count


class TrainingScalars(keras.callbacks.Callback):
    """Adds `learning_rate` and `images_per_second` to the epoch logs (so the
    CSV log and TensorBoard get them). Put it before those loggers."""

    adds_to_epoch_logs = True  # RunLog's row of a stopped epoch asks it too

    def __init__(self, batch_size):
        super().__init__()
        self.batch_size = batch_size

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._batches = None, 0

    def on_train_batch_end(self, batch, logs=None):
        if self._start is None:  # skip the first batch: it may include compilation
            self._start = time.perf_counter()
        else:
            self._batches += 1

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        lr = self.model.optimizer.learning_rate
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(lr))
        # Always present (NaN when too few batches to time), so that log.csv
        # keeps one set of columns across epochs and resumes.
        logs["images_per_second"] = float("nan")
        if self._batches:
            elapsed = time.perf_counter() - self._start
            logs["images_per_second"] = self._batches * self.batch_size / elapsed


class RunLog(keras.callbacks.CSVLogger):
    """A run's log.csv: Keras' CSVLogger (a row per epoch, appended: a failed
    write never truncates the rows there), and

    - a resumed run writes the columns of the file's header, so every row
      lines up under it;
    - a run that stops inside an epoch (a NaN, Ctrl-C, a full disk) gets a
      row for it too: its last finished batch's values, with what the
      callbacks that add to the epoch logs add (`log_stopped_epoch`). A run
      that stops in its first epoch no longer leaves an empty log. (A kill -9
      writes nothing: the rows up to the last epoch end are there.)"""

    def on_train_begin(self, logs=None):
        self.writer = None
        super().on_train_begin(logs)
        self.epoch, self.batch_logs = None, None
        if self.append and os.path.isfile(self.filename):
            with open(self.filename) as f:
                header = f.readline().strip()
            if header:  # the file's columns, not this process's first epoch's
                self.keys = [k for k in header.split(self.sep) if k != "epoch"]

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.batch_logs = epoch, None

    def on_train_batch_end(self, batch, logs=None):
        self.batch_logs = dict(logs or {})

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self.batch_logs = None

    def write_stopped_epoch(self, callbacks=()):
        """The row of the epoch the run stopped inside, if it finished a batch
        of it; `callbacks` that add to the epoch logs (`adds_to_epoch_logs`)
        add their values first. Closes the file."""
        if self.batch_logs is None or self.csv_file is None or self.csv_file.closed:
            return
        logs = {k: _scalar(v) for k, v in self.batch_logs.items()}
        for callback in callbacks:
            if getattr(callback, "adds_to_epoch_logs", False):
                callback.on_epoch_end(self.epoch, logs)
        self.on_epoch_end(self.epoch, logs)
        self.csv_file.close()
        self.writer = None  # a next fit (a rollback) opens the file again


def _scalar(value):
    try:
        return float(np.asarray(keras.ops.convert_to_numpy(value)).reshape(()))
    except (TypeError, ValueError):
        return value


def log_stopped_epoch(callbacks):
    """After `fit` raised: each RunLog among `callbacks` writes the row of the
    epoch the run stopped inside. Never raises (the error that stopped the run
    is the one to report; a full disk may refuse this row too)."""
    for callback in callbacks:
        if isinstance(callback, RunLog):
            try:
                callback.write_stopped_epoch(callbacks)
            except Exception as e:  # noqa: BLE001
                warnings.warn(f"log.csv: the stopped epoch's row was not written ({e}).")


class ViewGrid(keras.callbacks.Callback):
    """Every `every_n_epochs` epochs, a grid of what the model is given: per
    row the input, the student view with its masked patches dimmed, and the
    teacher view. Written as PNG into `directory` and, when TensorFlow is
    installed, as an image summary under `log_dir`.

    Uses copies of the model's views and mask generator, so the model's own
    random streams (and thus resumed runs) are untouched.
    """

    def __init__(self, images, directory, every_n_epochs=5, log_dir=None, seed=0):
        super().__init__()
        self.images = np.asarray(images)
        self.directory = directory
        self.every_n_epochs = every_n_epochs
        self.log_dir = log_dir
        self.seed = seed

    def make_grid(self):
        model = self.model
        views = model.views.__class__.from_config({**model.views.get_config(), "seed": self.seed})
        masker = model.mask_generator.__class__.from_config(
            {**model.mask_generator.get_config(), "seed": self.seed})
        student, teacher = (np.asarray(keras.ops.convert_to_numpy(v)) for v in views(self.images))
        mask = np.asarray(keras.ops.convert_to_numpy(masker(self.images)))
        gh, gw = model.encoder.grid_size
        p = model.encoder.patch_size
        mask = mask.reshape(-1, gh, gw).repeat(p, 1).repeat(p, 2)[..., None]

        def to_uint8(x):
            lo, hi = x.min(axis=(1, 2, 3), keepdims=True), x.max(axis=(1, 2, 3), keepdims=True)
            return ((x - lo) / np.maximum(hi - lo, 1e-6) * 255).astype("uint8")

        size = student.shape[1:3]

        inputs = np.stack([resize_image(img, size, "pad") for img in self.images])
        channels = student.shape[-1]
        inputs = inputs if inputs.shape[-1] == channels else np.repeat(inputs[..., :1], channels, -1)
        masked = (to_uint8(student) * np.where(mask, 0.25, 1.0)).astype("uint8")
        rows = [np.concatenate([a, b, c], axis=1) for a, b, c in
                zip(inputs, masked, to_uint8(teacher))]
        return np.concatenate(rows, axis=0)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        with this_host_only():  # the chief draws alone, also across hosts
            grid = self.make_grid()
        os.makedirs(self.directory, exist_ok=True)
        try:
            from PIL import Image

            img = grid[..., 0] if grid.shape[-1] == 1 else grid
            Image.fromarray(img).save(os.path.join(self.directory, f"views-epoch{epoch + 1:04d}.png"))
        except ImportError:
            pass
        if self.log_dir:
            try:
                import tensorflow as tf
            except ImportError:
                return
            with tf.summary.create_file_writer(os.path.join(self.log_dir, "images")).as_default():
                tf.summary.image("input | student view + mask | teacher view",
                                 grid[None], step=epoch + 1)
