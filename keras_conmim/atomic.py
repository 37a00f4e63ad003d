"""Writing that never leaves a half-written file behind: text files, `.keras`
files and preset folders go to a temporary name beside the target and are
renamed into place. Imports keras and nothing of the package above
`distribute` (every layer may save through it)."""

import contextlib
import json
import os
import shutil

import keras

from keras_conmim.models.distribute import this_host_only
from keras_conmim.errors import StorageError
from keras_conmim.version import __version__


def make_parent(path):
    """Make the folder `path` will go in; a `StorageError` that names the
    file and the fix when it cannot be made. Returns the folder."""
    directory = os.path.dirname(os.path.abspath(path))
    _make_folder(directory, path)
    return directory


def _make_folder(directory, path):
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot write {path}: its folder {directory} cannot be made "
                           f"({e.strerror or e}); pass a path in a writable folder") from None


@contextlib.contextmanager
def _renamed_into_place(path, tmp_name):
    """Yields a temporary path (`tmp_name`, beside `path`; the folder is made if
    missing) that is renamed onto `path` when the block ends without error and
    removed otherwise: a crash mid-write leaves the previous file (or none),
    never a partial one."""
    directory = os.path.dirname(os.path.abspath(path))
    _make_folder(directory, path)
    tmp = os.path.join(directory, tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path, text):
    """Write `text` to `path` atomically (the JSON reports, run files and cards
    that recipes and benchmarks rewrite as they go)."""
    with _renamed_into_place(path, f".{os.path.basename(path)}.{os.getpid()}.partial") as tmp:
        with open(tmp, "w") as f:
            f.write(text)
    return path


def save_atomic(model, path):
    """`model.save(path)` atomically: through a temporary file renamed into
    place."""
    if not path.endswith(".keras"):
        raise ValueError(f"Expected a path ending in '.keras', received {path!r}.")
    stem = os.path.basename(path)[:-len(".keras")]
    with _renamed_into_place(path, f".{stem}.{os.getpid()}.partial.keras") as tmp:
        with this_host_only():  # the chief may save alone, also across hosts
            model.save(tmp)
    return path


PRESET_CONFIG, PRESET_WEIGHTS, PRESET_METADATA = "config.json", "model.weights.h5", "metadata.json"


def save_preset(model, preset_dir):
    """A preset folder in KerasHub's layout: `config.json` (the model's Keras
    config), `model.weights.h5` and `metadata.json`. Written to a temporary
    folder and renamed into place."""
    if os.path.exists(preset_dir):
        raise FileExistsError(f"{preset_dir} exists: pass a new folder (nothing is overwritten).")
    parent = os.path.dirname(os.path.abspath(preset_dir))
    _make_folder(parent, preset_dir)
    tmp = os.path.join(parent, f".{os.path.basename(preset_dir)}.{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        with open(os.path.join(tmp, PRESET_CONFIG), "w") as f:
            json.dump(keras.saving.serialize_keras_object(model), f, indent=2)
        model.save_weights(os.path.join(tmp, PRESET_WEIGHTS))
        with open(os.path.join(tmp, PRESET_METADATA), "w") as f:
            json.dump(dict(keras_version=keras.__version__,
                           keras_conmim_version=__version__,
                           parameter_count=int(model.count_params())), f, indent=2)
        os.replace(tmp, preset_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return preset_dir
