"""The manual cannot drift from the code.

- Every ```python block of README.md, CONTRIBUTING.md and docs/*.md runs, each
  in its own empty temporary folder, with `KERAS_CONMIM_DOCS_TEST=1` set. A
  block whose first line is `# test: skip (reason)` is shown, not run. The blocks
  call the backend-independent API, whose behaviour per backend the other tests
  pin, so they run once, on torch (eager: no compile wait), each in its own
  fresh interpreter with only the imports it shows, outside the repository
  (as a user's first lines run); a block whose first line is
  `# test: backend jax` (an export the torch backend cannot do) runs on JAX.
- Every `--flag` of a `python recipes/X.py` / `python bench/X.py` line in a
  ```bash block exists in that script's parser.
- Every relative link (a file, a folder, a `#heading`) resolves.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

BACKEND = os.environ.get("KERAS_BACKEND", "jax")

DOCS = ["README.md", "CONTRIBUTING.md"] + sorted(
    os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))
SKIP = "# test: skip"


def blocks(path, language):
    """(line number, code) of each fenced block in `language`."""
    text = open(os.path.join(ROOT, path)).read()
    found = []
    for match in re.finditer(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M):
        found.append((text[:match.start()].count("\n") + 1, match.group(1)))
    return found


def python_blocks():
    return [(path, line, code) for path in DOCS for line, code in blocks(path, "python")]


def test_docs_exist_and_readme_is_short():
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert len(readme.splitlines()) <= 300, "README.md is the manual's front page: keep it short"
    for name in ("pretraining", "data", "distributed", "finetuning", "downstream", "benchmarks",
                 "method", "differences", "design"):
        assert os.path.isfile(os.path.join(ROOT, "docs", f"{name}.md")), name
    assert python_blocks(), "no python block found"


BACKEND_LINE = re.compile(r"# test: backend (jax|tensorflow|torch)\b")


def run_block(where, code, backend, tmp_path):
    """Run one block as a user would: a fresh interpreter, with only the
    imports the block shows, in an empty folder outside the repository (the
    installed package, not the checkout on the path). The error, or None."""
    folder = tmp_path / re.sub(r"\W", "_", where)
    folder.mkdir()
    env = dict(os.environ, KERAS_CONMIM_DOCS_TEST="1", KERAS_BACKEND=backend)
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=900, cwd=folder)
    return None if done.returncode == 0 else done.stderr[-3000:]


@pytest.mark.skipif(BACKEND != "torch", reason="the blocks use the backend-independent API; run once")
def test_every_python_block_runs(tmp_path):
    todo = {}
    for path, line, code in python_blocks():
        first = code.splitlines()[0]
        if code.startswith(SKIP):
            assert re.match(r"# test: skip \(.+\)", first), f"{path}:{line}: say why it is skipped"
            continue
        match = BACKEND_LINE.match(first)
        todo.setdefault(match.group(1) if match else "torch", []).append((f"{path}:{line}", code))
    failures = []
    for backend, blocks in sorted(todo.items()):
        for where, code in blocks:
            error = run_block(where, code, backend, tmp_path)
            if error:
                failures.append((where, error))
    assert not failures, "\n\n".join(f"{where}:\n{error}" for where, error in failures)


def commands():
    """(doc, script, flags) for every `python recipes|bench/X.py ...` command
    in a bash block (continuation lines joined)."""
    found = []
    for path in DOCS:
        for _, code in blocks(path, "bash"):
            for line in code.replace("\\\n", " ").splitlines():
                for match in re.finditer(r"python3? ((?:recipes|bench)/\w+\.py)([^;&|#]*)", line):
                    flags = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", match.group(2))
                    found.append((path, match.group(1), flags))
    return found


HELP_RUNNER = r"""
import contextlib, io, json, os, runpy, sys
out = {}
for script in json.loads(sys.argv[1]):
    path = os.path.join(os.getcwd(), script)
    sys.argv = [path, "--help"]
    sys.path.insert(0, os.path.dirname(path))  # as `python script.py` does
    text = io.StringIO()
    try:
        with contextlib.redirect_stdout(text):
            runpy.run_path(path, run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code or 0
    sys.path.pop(0)
    out[script] = [code, text.getvalue()]
print(json.dumps(out))
"""


def parser_flags(scripts):
    """{script: its --help's flags}: each script's `--help`, all in one
    interpreter (one Keras import for all of them)."""
    done = subprocess.run([sys.executable, "-c", HELP_RUNNER, json.dumps(sorted(scripts))],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, COLUMNS="200"))
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    bad = {s: code for s, (code, _) in found.items() if code != 0}
    assert not bad, f"--help failed: {bad}"
    return {s: set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))
            for s, (_, text) in found.items()}


@pytest.mark.skipif(BACKEND != "torch", reason="backend-independent: checked once")
def test_every_flag_shown_exists():
    found = commands()
    assert len(found) > 20
    known = parser_flags({script for _, script, _ in found})
    missing = []
    for path, script, flags in found:
        missing += [f"{path}: {script} {flag}" for flag in flags if flag not in known[script]]
    assert not missing, "flags the docs show but the scripts do not have:\n" + "\n".join(missing)


def slug(heading):
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    text = open(path).read()
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.skipif(BACKEND != "torch", reason="backend-independent: checked once")
def test_every_relative_link_resolves():
    bad = []
    for path in DOCS:
        text = open(os.path.join(ROOT, path)).read()
        text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(ROOT, os.path.dirname(path), file)) if file \
                else os.path.join(ROOT, path)
            if not os.path.exists(full):
                bad.append(f"{path}: {target} (no such file)")
            elif anchor and anchor not in anchors(full):
                bad.append(f"{path}: {target} (no such heading)")
    assert not bad, "\n".join(bad)


@pytest.mark.skipif(BACKEND != "torch", reason="backend-independent: checked once")
def test_readme_headline_table_is_what_the_script_prints(capsys):
    """README quotes `python bench/headline.py`; the quote is its output on the
    committed result files, to the character."""
    sys.path.insert(0, ROOT)
    from bench import headline

    headline.main([])
    printed = "\n".join(line.rstrip() for line in capsys.readouterr().out.strip().splitlines())
    assert printed in open(os.path.join(ROOT, "README.md")).read()


@pytest.mark.skipif(BACKEND != "torch", reason="backend-independent: checked once")
def test_every_result_table_is_printed_from_committed_results():
    """docs' result tables are what `python bench/doc_tables.py` prints from the
    committed files under bench/results/ (nothing typed in)."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "doc_tables.py"),
                           "--check"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    for doc in ("docs/benchmarks.md",):  # every table there is a result table
        text = open(os.path.join(ROOT, doc)).read()
        starts = [i for i, line in enumerate(text.splitlines())
                  if line.startswith("|") and (i == 0 or not text.splitlines()[i - 1].startswith("|"))]
        lines = text.splitlines()
        unmarked = [lines[i] for i in starts if not lines[i - 1].startswith("<!-- table: ")]
        assert not unmarked, f"{doc}: tables not printed by bench/doc_tables.py: {unmarked}"
