"""Saving that never leaves a half-written file behind."""

import contextlib
import os


@contextlib.contextmanager
def _renamed_into_place(path, tmp_name):
    """Yields a temporary path (`tmp_name`, beside `path`; the folder is made if
    missing) that is renamed onto `path` when the block ends without error and
    removed otherwise: a crash mid-write leaves the previous file (or none),
    never a partial one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
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
    from keras_conmim.distribute import this_host_only

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
    import json
    import shutil

    import keras

    import keras_conmim

    if os.path.exists(preset_dir):
        raise FileExistsError(f"{preset_dir} exists: pass a new folder (nothing is overwritten).")
    parent = os.path.dirname(os.path.abspath(preset_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(preset_dir)}.{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        with open(os.path.join(tmp, PRESET_CONFIG), "w") as f:
            json.dump(keras.saving.serialize_keras_object(model), f, indent=2)
        model.save_weights(os.path.join(tmp, PRESET_WEIGHTS))
        with open(os.path.join(tmp, PRESET_METADATA), "w") as f:
            json.dump(dict(keras_version=keras.__version__,
                           keras_conmim_version=keras_conmim.__version__,
                           parameter_count=int(model.count_params())), f, indent=2)
        os.replace(tmp, preset_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return preset_dir


def load_preset(preset_dir):
    """The model of a preset folder: one written by `save_preset` /
    `ViT.save_to_preset`, or by a KerasHub backbone's `save_to_preset` (then
    loaded through `keras_hub.models.Backbone.from_preset`). Safe: the config
    is deserialised in Keras' safe mode, the weights are an HDF5 file."""
    import json

    import keras

    import keras_conmim

    path = os.path.join(preset_dir, PRESET_CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{preset_dir}: no {PRESET_CONFIG}; not a preset folder.")
    with open(path) as f:
        config = json.load(f)
    registered = str(config.get("registered_name") or "")
    if registered.startswith("keras_conmim>") and "Pyramid" not in registered \
            and "CV" not in registered:
        keras_conmim.register_all()
        model = keras.saving.deserialize_keras_object(config, safe_mode=True)
        model.load_weights(os.path.join(preset_dir, PRESET_WEIGHTS))
        return model
    import keras_hub

    if "Pyramid" in registered:
        import keras_conmim.kerashub  # noqa: F401  (registers the backbone)
    return keras_hub.models.Backbone.from_preset(preset_dir)


def load_encoder(path, which="teacher"):
    """The `ViT` inside any file this package writes: a bare encoder, a
    `ConMIM` model or checkpoint (`which="teacher"`, as the release
    fine-tunes, or `"student"`), a `ServingEncoder` or a `ViTClassifier`; a
    preset folder (`save_to_preset`, ours or a KerasHub backbone's around
    one); or the name of a preset that carries weights
    (`keras_conmim.list_presets()`)."""
    import keras

    import keras_conmim
    from keras_conmim.conmim import ConMIM
    from keras_conmim.presets import PRESETS, WEIGHTS, weights_path
    from keras_conmim.vit import ViT

    keras_conmim.register_all()  # the classes the file names
    if which not in ("teacher", "student"):
        raise ValueError(f"which must be 'teacher' or 'student', received {which!r}.")
    if os.path.isdir(path):
        model = load_preset(path)
    else:
        if not os.path.isfile(path):
            if path in WEIGHTS:
                path = weights_path(path)
            elif path in PRESETS:
                raise ValueError(
                    f"Preset {path!r} is an architecture without weights: use "
                    f"keras_conmim.ViT.from_preset({path!r}) for random init, or one of the presets "
                    f"with weights: {', '.join(WEIGHTS)}.")
            else:
                raise FileNotFoundError(
                    f"{path}: no such file, folder or preset with weights. Pass a .keras file "
                    "written by keras_conmim (recipes/pretrain.py writes teacher_encoder.keras), a "
                    f"preset folder, or one of: {', '.join(WEIGHTS)}.")
        import zipfile

        if not zipfile.is_zipfile(path):  # Keras would call it "File not found"
            raise ValueError(f"{path} is not a .keras file: it is no zip archive (corrupt, "
                             "truncated, or another format). Pass a .keras file written by "
                             "keras_conmim, a preset folder, or a preset with weights.")
        model = keras.saving.load_model(path)
    if isinstance(model, ConMIM):
        if which == "teacher" and model.objective == "pixel":
            raise ValueError(f"{path} holds a pixel-objective ConMIM, whose teacher is never "
                             "trained: pass which='student'.")
        return model.teacher_encoder if which == "teacher" else model.encoder
    if isinstance(model, ViT):
        return model
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, ViT):
        return encoder
    raise ValueError(f"{path} holds a {type(model).__name__}, which has no ViT encoder.")
