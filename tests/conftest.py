import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tests import the recipes and bench scripts as modules, and those import
# their siblings by plain name (as `python recipes/x.py` lets them): the
# repository (for `recipes.x`), recipes/, bench/ and tests/ go on the path.
# The package itself is installed (pip install -e .), not put on the path.
for _folder in (ROOT, os.path.join(ROOT, "recipes"), os.path.join(ROOT, "bench"),
                os.path.dirname(os.path.abspath(__file__))):
    sys.path.insert(0, _folder)


def pytest_configure(config):
    """On JAX the suite's time is mostly XLA compiling tiny models, so, for
    this process, its pytest-xdist workers (`-n 2`: started after this hook,
    they inherit the environment and return early here, sharing the cache)
    and the recipe / multi-device subprocesses they start, set before JAX is
    imported:
    - XLA's backend optimisation level 0 (LLVM's -O0): compiles faster, runs
      the tiny models no slower that matters (test_conmim.py: 73 -> 52 s);
      an XLA_FLAGS that sets the level already wins;
    - one compilation cache for the whole session (the same programs compile
      again in every recipe subprocess); an existing
      JAX_COMPILATION_CACHE_DIR wins."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if os.environ.get("KERAS_BACKEND", "") == "torch" and os.environ.get("PYTEST_XDIST_WORKER"):
        # each xdist worker gets its share of the cores: torch's default (every
        # core per process) oversubscribes them, and two workers thrash
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    if os.environ.get("KERAS_BACKEND", "") != "jax":
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=0").strip()
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    import tempfile

    cache = tempfile.mkdtemp(prefix="keras_conmim_xla_cache_")
    config._keras_conmim_xla_cache = cache
    os.environ.update(JAX_COMPILATION_CACHE_DIR=cache,
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    if "jax" in sys.modules:  # imported by a plugin already
        import jax

        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    cache = getattr(config, "_keras_conmim_xla_cache", None)
    if cache:
        import shutil

        shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(1234)
    yield


TINY_VIT = dict(image_shape=(16, 16, 1), patch_size=4, num_layers=2, num_heads=2,
                hidden_dim=16, mlp_dim=32)


def tiny_vit(**overrides):
    import keras_conmim as kc

    return kc.ViT(**{**TINY_VIT, **overrides})


def tiny_resnet(size):
    """KerasHub's ResNet (basic blocks, one per stage; KerasHub wants 64 filters
    in the stem and the first stage) on `size` px single-channel images, P2-P5."""
    import keras_hub

    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 8, 8, 8],
        stackwise_num_blocks=[1, 1, 1, 1], stackwise_num_strides=[1, 2, 2, 2],
        block_type="basic_block", image_shape=(size, size, 1))


def randomize_weights(layer, seed=0, scale=0.2):
    """Give every weight numpy-random values, the same on every backend."""
    rng = np.random.RandomState(seed)
    for v in layer.weights:
        if v.trainable:
            v.assign((rng.standard_normal(v.shape) * scale).astype(v.dtype))


def uint8_images(n, size=16, channels=1, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, size, size, channels)).astype("uint8")


def to_numpy(x):
    import keras

    return np.asarray(keras.ops.convert_to_numpy(x))


def load_bench_script(name):
    """bench/<name>.py as a module (the bench folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- running a recipe: one runner in this interpreter, one as a command -------

BACKEND = os.environ.get("KERAS_BACKEND", "jax")


def run_recipe(name, *argv, backend=None):
    """`python recipes/<name>.py --backend B *argv`, in this interpreter
    (no new process, no second Keras import): the same `main` and the same
    one-line error path (`recipe_main.run`). Returns a CompletedProcess with
    the exit status and what the recipe printed. The backend is this run's;
    a recipe checks its --backend against the Keras already imported."""
    import contextlib
    import importlib
    import io
    import subprocess

    import keras
    import recipe_main

    backend = backend or keras.backend.backend()
    module = importlib.import_module(f"recipes.{name}")
    args = ["--backend", backend, *map(str, argv)]
    out, err, code = io.StringIO(), io.StringIO(), 0
    policy, distribution = keras.config.dtype_policy(), keras.distribution.distribution()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            recipe_main.run(lambda: module.main(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:  # what a recipe sets for its process stays with its run
            keras.config.set_dtype_policy(policy)
            keras.distribution.set_distribution(distribution)
    return subprocess.CompletedProcess([f"recipes/{name}.py", *args], code, out.getvalue(),
                                       err.getvalue())


def recipe_command(name, *argv, backend=None, env=None, timeout=600, log=None, start=False):
    """`python recipes/<name>.py --backend B *argv` as a new process, from the
    repository, for what needs one: a kill -9, the backend chosen before Keras
    loads, several devices, a second run beside this one. `start`: the
    Popen (output to the file `log`, or a pipe), else the CompletedProcess."""
    import subprocess

    backend = backend or BACKEND
    command = [sys.executable, os.path.join(ROOT, "recipes", f"{name}.py"), "--backend", backend,
               *map(str, argv)]
    env = dict(os.environ, KERAS_BACKEND=backend, **(env or {}))
    if backend == "torch" and "torch" in sys.modules:  # this worker's share of the cores, so a
        # run split between a command and this process sums in the same order
        env.setdefault("OMP_NUM_THREADS", str(sys.modules["torch"].get_num_threads()))
    if start:  # a log path, a file (or DEVNULL), or a pipe
        out = open(log, "w") if isinstance(log, (str, os.PathLike)) else log
        proc = subprocess.Popen(command, stdout=subprocess.PIPE if out is None else out,
                                stderr=subprocess.PIPE if out is None else subprocess.STDOUT,
                                text=True, env=env, cwd=ROOT)
        if out is not log:
            out.close()  # the child has its own copy
        return proc
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=ROOT)
