"""A run's folder: which files belong to a run, moving an old run aside,
and `config.json` as the record of what ran (with every start and resume),
the one run-file format of every recipe (pre-training writes it in its
--output, fine-tuning beside its checkpoints), and the one resume check
(`resume_problems`). Standard library only.

The promise: two runs never mix in one folder. A run that starts fresh in a
folder that holds another run's files moves them into
`previous_runs/<time>/` first; a run that resumes must have been started
with the same settings (`resume_problems`).
"""

import datetime
import json
import os
import re

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
PREVIOUS = "previous_runs"
# What recipes/pretrain.py writes into --output; nothing else there is touched
# (the default output is saved_models/, which holds other files too).
RESULTS = "results.json"  # the finished run's result, for scripts
RUN_FILES = (CONFIG, RESULTS, "log.csv", CHECKPOINTS, "tensorboard", "views", "conmim.keras",
             "teacher_encoder.keras", "student_encoder.keras")
CHECKPOINT_PATTERN = re.compile(r"^ckpt-(\d{8})\.keras$")


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
        if key in mutable or key not in saved or _same(saved[key], value):
            continue
        if key == "epochs":
            problems.append(
                f"epochs: this run was sized for {saved[key]} epoch{'' if saved[key] == 1 else 's'} (its learning-rate cosine "
                f"and teacher momentum end there), this command asks for {value}; resuming "
                "cannot re-size them")
        else:
            problems.append(f"{key}: the run has {saved[key]!r}, this command {value!r}")
    return problems


def _same(a, b):
    # JSON turns tuples into lists.
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
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
        changed = {k: [saved[k], v] for k, v in config.items() if k in saved and not _same(saved[k], v)}
        if changed:
            entry["changed"] = changed
    history.append(entry)
    return json.dumps({**config, **(extra or {}), "recipe_sources": sources, "history": history},
                      indent=2)
