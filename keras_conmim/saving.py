"""Saving that never leaves a half-written file behind."""

import os


def save_atomic(model, path):
    """`model.save(path)` through a temporary file renamed into place, so a
    crash mid-write leaves the previous file (or none), never a partial one."""
    if not path.endswith(".keras"):
        raise ValueError(f"Expected a path ending in '.keras', received {path!r}.")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)[:-6]}.{os.getpid()}.partial.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
