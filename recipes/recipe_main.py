"""What every recipe does first and last (stdlib only, imported before Keras).

    if __name__ == "__main__":
        recipe_main.choose_backend()      # before anything imports Keras
    import keras_conmim as kc             # imports Keras with that backend
    ...
    if __name__ == "__main__":
        recipe_main.run(main)             # the library's errors as one line

`choose_backend` first checks that this Python can import the package (a
clone run without `pip install -e .` gets one line saying so, not a
traceback from the first import), then reads `--backend` from the command line (or the `backend`
key of a `--config` file) and sets `KERAS_BACKEND`, which Keras reads once, at
its first import. `run` turns the library's typed errors
(`keras_conmim.errors.ConMIMError`) into `error: <message>` on stderr and
exit status 2, with no traceback; anything else is a bug and keeps its
traceback.
"""

import importlib.util
import json
import os
import sys

# keras_conmim.runs.cli.BACKENDS, copied: this module may not import the package
# (tests/test_import_graph.py checks they agree).
BACKENDS = ("jax", "tensorflow", "torch")


def _flag(argv, name):
    """The value of `--name V` or `--name=V` in argv, else None."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1:]
    return None


def _backend_in_file(path):
    """The `backend` key of a JSON / YAML config file, or None (a file that
    does not parse is reported by the recipe's own parser, with its line)."""
    try:
        with open(path) as f:
            text = f.read()
        if path.endswith((".yaml", ".yml")):
            import yaml

            config = yaml.safe_load(text)
        else:
            config = json.loads(text)
    except Exception:  # noqa: BLE001  (reported later, with line and column)
        return None
    return config.get("backend") if isinstance(config, dict) else None


def require_package():
    """Exit with one line (status 2) where keras_conmim is not importable."""
    if importlib.util.find_spec("keras_conmim") is None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        print(f"error: keras_conmim is not installed in this Python ({sys.executable}): run "
              f"`pip install -e {root}` (README: Install and run), then the recipe again",
              file=sys.stderr, flush=True)
        sys.exit(2)


def choose_backend(argv=None):
    """Set KERAS_BACKEND from --backend (else a --config file's `backend`,
    else the environment's, else jax). A value that is no backend is left
    for the recipe's parser to refuse with the valid choices."""
    require_package()
    argv = sys.argv[1:] if argv is None else argv
    backend = _flag(argv, "--backend")
    if backend is None and _flag(argv, "--config"):
        backend = _backend_in_file(_flag(argv, "--config"))
    backend = backend or os.environ.get("KERAS_BACKEND") or "jax"
    if backend in BACKENDS:
        os.environ["KERAS_BACKEND"] = backend
    return backend


def run(main):
    """Call `main()`; a library error becomes one line and exit status 2."""
    from keras_conmim.errors import ConMIMError

    try:
        return main()
    except ConMIMError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
