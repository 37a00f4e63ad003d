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


def load_encoder(path, which="teacher"):
    """The `ViT` inside any `.keras` file this package writes: a bare encoder,
    a `ConMIM` model or checkpoint (`which="teacher"`, as the release
    fine-tunes, or `"student"`), a `ServingEncoder` or a `ViTClassifier`."""
    import keras

    import keras_conmim  # noqa: F401  (registers the classes the file names)
    from keras_conmim.conmim import ConMIM
    from keras_conmim.vit import ViT

    if which not in ("teacher", "student"):
        raise ValueError(f"which must be 'teacher' or 'student', received {which!r}.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file. Pass a .keras file written by "
                                "keras_conmim (recipes/pretrain.py writes teacher_encoder.keras).")
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
