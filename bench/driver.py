"""What the benchmark drivers share: run a recipe as a subprocess (its output
goes to a log, for people) and read the result file it writes (for scripts).
Nothing here parses printed text.

- `recipes/pretrain.py` writes `results.json` in its `--output`;
- `recipes/finetune.py` and `recipes/linear_probe.py` write `--results-json PATH`.
"""

import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from keras_conmim.atomic import write_text_atomic  # noqa: F401  (re-exported)


def machine(backend):
    """The facts a result is read against: architecture, cores, backend."""
    return f"{platform.machine()}, {os.cpu_count()} cores, backend {backend}"


def run(cmd, log):
    """`python *cmd` from the repository root, its output into `log`; the
    seconds it took. A failure exits with the command and the log's end."""
    start = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, *cmd], stdout=f, stderr=subprocess.STDOUT,
                              cwd=ROOT, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode:
        with open(log) as f:
            tail = f.read().replace("\r", "\n").strip().splitlines()[-20:]
        raise SystemExit(f"failed: {' '.join(cmd)} (log: {log})\n" + "\n".join(tail))
    return elapsed


def read_json(path):
    with open(path) as f:
        return json.load(f)


def run_for_results(cmd, log, results=None):
    """Run a recipe that writes a result file and return (that file's dict,
    seconds). `results`: the `--results-json` path to pass (default: beside
    `log`, `.json` for `.log`)."""
    results = results or os.path.splitext(log)[0] + ".json"
    if os.path.exists(results):
        os.remove(results)  # never read a previous run's result
    seconds = run([*cmd, "--results-json", results], log)
    return read_json(results), seconds


def pretrain(cmd, log):
    """Run `recipes/pretrain.py` (`cmd` names its --output) and return (its
    run folder's results.json, seconds)."""
    output = cmd[cmd.index("--output") + 1]
    path = os.path.join(output, "results.json")
    if os.path.exists(path):
        os.remove(path)
    seconds = run(cmd, log)
    return read_json(path), seconds
