"""A run's folder: which files belong to a run, moving an old run aside,
and `config.json` as the record of what ran (with every start and resume),
the one run-file format of every recipe (pre-training writes it in its
--output, fine-tuning beside its checkpoints), and the one resume check
(`resume_problems`). Below the run engine (`runs.engine.Run`), which keeps
these promises for every run kind.

The promise: two runs never mix in one folder. A run that starts fresh in a
folder that holds another run's files moves them into
`previous_runs/<time>/` first; a run that resumes must have been started
with the same settings (`resume_problems`).
"""

import datetime
import json
import os

from keras_conmim.models.callbacks import CHECKPOINT_PATTERN
from keras_conmim.errors import ConfigError, RunInUseError

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
PREVIOUS = "previous_runs"
# What recipes/pretrain.py writes into --output; nothing else there is touched
# (the default output is saved_models/, which holds other files too).
RESULTS = "results.json"  # the finished run's result, for scripts
RUN_FILES = (CONFIG, RESULTS, "log.csv", CHECKPOINTS, "tensorboard", "views", "conmim.keras",
             "teacher_encoder.keras", "student_encoder.keras",
             # the downstream recipes' (recipes/segment.py, recipes/detect.py)
             "model.keras", "predictions.png", "serving",
             # recipes/finetune.py's
             "classifier.keras")


def has_checkpoints(output):
    folder = os.path.join(output, CHECKPOINTS)
    return os.path.isdir(folder) and any(CHECKPOINT_PATTERN.match(n) for n in os.listdir(folder))


def run_files(output):
    """The names in `output` that a run wrote."""
    return [n for n in RUN_FILES if os.path.exists(os.path.join(output, n))]


def move_aside(output):
    """Move the run files in `output` into `output/previous_runs/<UTC time>/`
    (renames: nothing is copied or deleted). Returns that folder, or None
    when there was nothing to move."""
    names = run_files(output)
    if not names:
        return None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    target = os.path.join(output, PREVIOUS, stamp)
    suffix = 1
    while os.path.exists(target):
        suffix += 1
        target = os.path.join(output, PREVIOUS, f"{stamp}-{suffix}")
    os.makedirs(target)
    for name in names:
        os.replace(os.path.join(output, name), os.path.join(target, name))
    return target


def read_config(output):
    """The `config.json` of the run in `output`, or None."""
    path = os.path.join(output, CONFIG)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def resume_problems(saved, config, mutable):
    """Why the run recorded in `saved` (its config.json) cannot go on under
    `config`: one line per setting that differs, other than the `mutable`
    ones (where files go, how often to checkpoint, the backend...). A key the
    saved config lacks (written by an older version) is not compared."""
    problems = []
    for key, value in config.items():
        if key in mutable or key not in saved or same(saved[key], value):
            continue
        if key == "epochs":
            problems.append(
                f"epochs: this run was sized for {saved[key]} epoch{'' if saved[key] == 1 else 's'} (its learning-rate cosine "
                f"and teacher momentum end there), this command asks for {value}; resuming "
                "cannot re-size them")
        else:
            problems.append(f"{key}: the run has {saved[key]!r}, this command {value!r}")
    return problems


def same(a, b):
    # JSON turns tuples into lists.
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def record(config, sources, saved, event, step, checkpoint=None, extra=None):
    """The config.json text for this start or resume: the settings that run
    now, where the recipe values came from, what else the run records
    (`extra`, e.g. the fine-tuning head's start), and the history of earlier
    starts and resumes (from `saved`) with this one appended, naming the
    mutable settings it changed. The one run-file format of every recipe."""
    history = list((saved or {}).get("history", []))
    entry = {"event": event, "time": datetime.datetime.now(datetime.timezone.utc)
             .isoformat(timespec="seconds"), "step": step}
    if checkpoint:
        entry["checkpoint"] = os.path.basename(checkpoint)
    if saved:
        changed = {k: [saved[k], v] for k, v in config.items() if k in saved and not same(saved[k], v)}
        if changed:
            entry["changed"] = changed
    history.append(entry)
    return json.dumps({**config, **(extra or {}), "recipe_sources": sources, "history": history},
                      indent=2)


# ---- one run per folder --------------------------------------------------------

LOCK = ".run.lock"
HEARTBEAT_SECONDS = 30  # the holder touches its lock this often
STALE_SECONDS = 300  # a lock from another host untouched this long belongs to a dead run


def _lock_info():
    import socket
    import sys

    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:500]}


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def lock_holder(folder):
    """`(info, stale)` for the lock in `folder` (info: pid, host, started,
    command), or `(None, False)` when nothing holds it. A lock is stale when
    its process is gone (same host) or it has not been touched for
    STALE_SECONDS (another host: its process cannot be asked)."""
    import socket
    import time

    path = os.path.join(folder, LOCK)
    try:
        with open(path) as f:
            info = json.load(f)
        age = time.time() - os.path.getmtime(path)
    except FileNotFoundError:
        return None, False
    except (OSError, ValueError):  # half-written by a run killed while taking it
        return {"pid": None, "host": "?", "started": "?", "command": "?"}, True
    if info.get("host") == socket.gethostname():
        return info, not _alive(int(info.get("pid") or -1))
    return info, age > STALE_SECONDS


def describe_holder(info):
    return (f"process {info.get('pid')} on host {info.get('host')}, started {info.get('started')} "
            f"({info.get('command')})")


class hold:
    """`with run_folder.hold(folder):` the run owns `folder` until the block
    ends. A second run into a folder that a live run holds raises
    RunInUseError at once, naming the holder; a lock left by a dead run is
    taken over with a warning. The lock file is created with O_EXCL (atomic,
    also on NFS v3 and later), its content names the holder, and a thread
    touches it every HEARTBEAT_SECONDS so that a run on another host can tell
    a live holder from a dead one. In a multi-process job only the process
    that writes files should hold it."""

    def __init__(self, folder, warn=print):
        self.folder = folder
        self.path = os.path.join(folder, LOCK)
        self.warn = warn
        self._stop = None
        self.info = None

    def _create(self):
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise
        except OSError as e:
            raise ConfigError(f"{self.folder}: cannot write there ({e.strerror or e}). Pass a "
                              "folder you can write, with free space.") from None
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.info, f)
        except OSError as e:
            os.remove(self.path)
            raise ConfigError(f"{self.folder}: cannot write there ({e.strerror or e}). Pass a "
                              "folder you can write, with free space.") from None

    def __enter__(self):
        import threading

        self.created = not os.path.isdir(self.folder)
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{self.folder}: cannot make this folder ({e.strerror or e}"
                              f"{': ' + e.filename if e.filename else ''}). Pass a folder you "
                              "can write.") from None
        self.info = _lock_info()
        for _ in range(3):
            try:
                self._create()
                break
            except FileExistsError:
                holder, stale = lock_holder(self.folder)
                if holder is None:
                    continue  # released meanwhile: try again
                if not stale:
                    raise RunInUseError(
                        f"{self.folder} is in use by another run: {describe_holder(holder)}. "
                        "Wait for it to finish, or pass another folder. Two runs in one folder "
                        f"would mix their files. (If that run is dead, delete {self.path}.)"
                    ) from None
                self.warn(f"warning: {self.folder} was held by a run that is gone "
                          f"({describe_holder(holder)}); taking it over")
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
        else:
            raise RunInUseError(f"{self.folder}: could not take its lock {self.path}; another "
                              "run is taking it at the same moment. Try again.")
        self._stop = threading.Event()
        thread = threading.Thread(target=self._beat, daemon=True, name="run-folder-heartbeat")
        thread.start()
        return self

    def _beat(self):
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(self.path)
            except OSError:
                return

    def __exit__(self, *exc):
        if self._stop is not None:
            self._stop.set()
        try:  # remove it only if it is still ours
            with open(self.path) as f:
                if json.load(f) == self.info:
                    os.remove(self.path)
            if self.created and not os.listdir(self.folder):
                os.rmdir(self.folder)  # a run refused before writing leaves no folder behind
        except (OSError, ValueError):
            pass
        return False
