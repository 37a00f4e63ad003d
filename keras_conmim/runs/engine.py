"""The run engine: one run in one folder, with the promises of README's
"What a run promises" kept the same way for every run kind (pre-training,
fine-tuning, segmentation, detection, instance segmentation), from the
command line or from Python.

    with Run(folder, settings, sources, mutable=("backend",)) as run:
        ...                               # read the data, build the model: nothing written yet
        step = run.start(model, sample)   # resume (exactly where it stopped) or start fresh
        run.fit(model, batches, steps, every=100)
        run.finish({"model.keras": model}, results)

- **One run per folder**: the folder's lock is held from `__enter__` to the
  end (`runs.folder.hold`); a second run into it is refused naming the holder.
- **Fresh or resume, decided once**: a folder with checkpoints resumes
  unless `no_resume`; its `config.json` must hold the same settings, other
  than the `mutable` ones (and what `problems` adds), else ResumeError naming
  each difference, before any file is written.
- **Nothing deleted**: a fresh start moves the run files already there into
  `previous_runs/<time>/` (`no_resume` included).
- **One record**: `config.json` holds the settings, each recipe value's
  source and the history of starts and resumes (`runs.folder.record`).
- **Checkpoints and log**: `fit` trains from the restored step with atomic
  checkpoints on a fixed grid of steps (an exact resume after kill -9) and
  `log.csv`; `finish` writes the final files atomically, removes the
  checkpoints (the run is whole in its files) and writes `results.json`.
"""

import contextlib
import json
import os

from keras_conmim.atomic import save_atomic, write_text_atomic
from keras_conmim.models.callbacks import (
    Checkpointer, RunLog, list_checkpoints, log_stopped_epoch, resume_from_checkpoint,
)
from keras_conmim.errors import ResumeError
from keras_conmim.runs import folder as run_folder


class Run:
    """A run in `folder` (see the module's docstring).

    Args:
        folder: the run's folder (made if missing).
        settings: what the run was made with: a resume must match them.
        sources: where each recipe value came from (recorded in config.json).
        mutable: settings a resume may change (where files go, the backend...).
        no_resume: start fresh even over a stopped run (moved aside).
        problems: `(saved, settings) -> [lines]`, the run kind's own resume
            rules beyond equality (pre-training: the lr may only go down).
        advice: the resume error's last line (what to do instead).
        log: where the run's one-line notes go (`print`).
        chief: False in the processes of a multi-process job that write no
            files (they neither lock the folder nor write in it).
    """

    def __init__(self, folder, settings, sources=None, mutable=(), no_resume=False,
                 problems=None, advice=None, log=print, chief=True):
        self.folder = folder
        self.settings = settings
        self.sources = sources or {}
        self.mutable = tuple(mutable)
        self.no_resume = no_resume
        self.problems = problems
        self.advice = advice or ("Pass --no-resume to move it aside and start over, or "
                                 "another --output.")
        self.log = log
        self.chief = chief
        self.checkpoints = os.path.join(folder, run_folder.CHECKPOINTS)
        self.saved = None
        self.resuming = False
        self._lock = None

    # --- the folder -----------------------------------------------------------------
    def __enter__(self):
        self._lock = run_folder.hold(self.folder, warn=self.log) if self.chief \
            else contextlib.nullcontext()
        self._lock.__enter__()
        try:
            self.resuming, self.saved = self._fresh_or_resume()
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)

    def _fresh_or_resume(self):
        if self.no_resume or not run_folder.has_checkpoints(self.folder):
            return False, None
        saved = run_folder.read_config(self.folder)
        if saved is None:
            self.log(f"warning: {self.folder} has checkpoints but no {run_folder.CONFIG} (an "
                     "older version's run): resuming without checking its settings")
            return True, None
        problems = run_folder.resume_problems(saved, self.settings, self.mutable)
        problems += self.problems(saved, self.settings) if self.problems else []
        if problems:
            raise ResumeError(f"{self.folder} holds a stopped run with other settings:\n  "
                              + "\n  ".join(problems) + "\n" + self.advice)
        return True, saved

    @property
    def previous_runs(self):
        return os.path.join(self.folder, run_folder.PREVIOUS)

    # --- start or resume ------------------------------------------------------------
    def restore(self, model, sample=None):
        """Load the newest finite checkpoint into `model` (compiled; built on
        `sample` when not built). Returns `(path, step)`."""
        return resume_from_checkpoint(model, self.checkpoints, sample=sample,
                                      moved_to=self.previous_runs)

    def start(self, model=None, sample=None, step=None, checkpoint=None, extra=None):
        """Begin writing: a resume restores `model` from its newest checkpoint
        (unless `step` says the caller restored it); a fresh run moves an
        earlier run's files aside. Records the start or resume in
        config.json. Returns the step the run goes on from."""
        if self.resuming and step is None:
            checkpoint, step = self.restore(model, sample)
            self.log(f"resumed from {checkpoint} at step {step}")
        elif not self.resuming and self.chief:
            moved = run_folder.move_aside(self.folder)
            if moved:
                self.log(f"{self.folder} held another run's files: moved them to {moved}")
        step = step or 0
        if self.chief:
            os.makedirs(self.checkpoints, exist_ok=True)
        self.record("resume" if self.resuming else "start", step, checkpoint, extra)
        return step

    def record(self, event, step, checkpoint=None, extra=None):
        """Append `event` (start, resume, rollback, nan...) to config.json's
        history; what the run recorded beside its settings (`extra`, e.g. the
        fine-tuning head) is carried over unless given anew."""
        if not self.chief:
            return
        base = self.saved or {}
        carried = {k: v for k, v in base.items()
                   if k not in self.settings and k not in ("recipe_sources", "history")}
        text = run_folder.record(self.settings, self.sources, self.saved, event, step,
                                 checkpoint, {**carried, **(extra or {})})
        write_text_atomic(os.path.join(self.folder, run_folder.CONFIG), text)
        self.saved = json.loads(text)

    # --- training -------------------------------------------------------------------
    def checkpointer(self, keep=2, every_n_steps=None, keep_first=False):
        """The run's Checkpointer (`keep_first`: the initial state is never
        rotated out, for a NaN to step back to)."""
        return Checkpointer(self.checkpoints, keep=keep, every_n_steps=every_n_steps,
                            keep_first=keep_first)

    def fit(self, model, batches, steps, every, first_step=0, callbacks=(), keep=2, verbose=2):
        """`keras.Model.fit` from `first_step` to `steps`, in epochs of `every`
        steps (a divisor of `steps`: `grid`), with a checkpoint at each epoch end
        and a log.csv row. `batches` yields batch i = step first_step + i.
        keras.Model.fit itself is called: KerasHub's task models turn any
        input that is not a tf.data / grain dataset into one."""
        import keras

        if first_step >= steps:
            return None
        callbacks = [self.checkpointer(keep), self.csv_log(), *callbacks]
        try:
            return keras.Model.fit(
                model, batches, steps_per_epoch=every, epochs=steps // every,
                initial_epoch=first_step // every, verbose=verbose, callbacks=callbacks)
        except BaseException:
            log_stopped_epoch(callbacks)  # the epoch it stopped inside gets its row too
            raise

    def csv_log(self):
        # append: a fresh run's old log.csv was moved aside, and a failed write
        # (a full disk) never truncates the rows already there
        return RunLog(os.path.join(self.folder, "log.csv"), append=True)

    # --- the end --------------------------------------------------------------------
    def finish(self, models, results=None):
        """Write each of `models` (`{file name: model}`) atomically, then remove
        the checkpoints (the run is whole in those files) and write
        results.json. Returns the results' path (or None)."""
        for name, model in models.items():
            save_atomic(model, os.path.join(self.folder, name))
        self.remove_checkpoints()
        if results is None:
            return None
        path = os.path.join(self.folder, run_folder.RESULTS)
        write_text_atomic(path, json.dumps(results, indent=2))
        return path

    def remove_checkpoints(self):
        for path in list_checkpoints(self.checkpoints):
            os.remove(path)
        if os.path.isdir(self.checkpoints) and not os.listdir(self.checkpoints):
            os.rmdir(self.checkpoints)


def grid(steps, every):
    """The largest divisor of `steps` <= `every`: fit's epoch length, so
    checkpoints fall on a grid that ends exactly at the last step."""
    return max(d for d in range(1, min(steps, every) + 1) if steps % d == 0)
