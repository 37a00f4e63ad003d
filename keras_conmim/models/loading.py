"""Loading what the package writes: preset folders (ours and KerasHub's),
`.keras` files of any of the package's models, and the presets that carry
weights. Imports no model class: what a file holds is found by its
registered name (`keras.saving.get_registered_object`, as KerasHub finds a
preset's class), every class being registered once `keras_conmim` is
imported, so `ViT.from_preset` imports this module as any other. KerasHub
is imported only for a KerasHub preset folder."""

import json
import os
import zipfile

import keras

from keras_conmim.integrations.adapters import adapter_class
from keras_conmim.atomic import PRESET_CONFIG, PRESET_WEIGHTS
from keras_conmim.models.layers import PACKAGE
from keras_conmim.presets import PRESETS, WEIGHTS, weights_path


def registered(name):
    """The class registered as `keras_conmim>name` (None before the module
    that defines it is imported; `import keras_conmim` imports them all)."""
    return keras.saving.get_registered_object(f"{PACKAGE}>{name}")


def load_preset(preset_dir):
    """The model of a preset folder: one written by `save_preset` /
    `ViT.save_to_preset`, or by a KerasHub backbone's `save_to_preset` (then
    loaded through `keras_hub.models.Backbone.from_preset`). Safe: the config
    is deserialised in Keras' safe mode, the weights are an HDF5 file."""
    path = os.path.join(preset_dir, PRESET_CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{preset_dir}: no {PRESET_CONFIG}; not a preset folder.")
    with open(path) as f:
        config = json.load(f)
    registered = str(config.get("registered_name") or "")
    if registered.startswith("keras_conmim>") and "Pyramid" not in registered \
            and "CV" not in registered:
        model = keras.saving.deserialize_keras_object(config, safe_mode=True)
        model.load_weights(os.path.join(preset_dir, PRESET_WEIGHTS))
        return model
    import keras_hub  # optional: only a KerasHub preset folder needs it

    if "Pyramid" in registered:
        adapter_class("ViTPyramidBackbone")  # imports the adapter (needs keras_hub)
    return keras_hub.models.Backbone.from_preset(preset_dir)


def load_encoder(path, which="teacher"):
    """The `ViT` inside any file this package writes: a bare encoder, a
    `ConMIM` model or checkpoint (`which="teacher"`, as the release
    fine-tunes, or `"student"`), a `ServingEncoder` or a `ViTClassifier`; a
    preset folder (`save_to_preset`, ours or a KerasHub backbone's around
    one); or the name of a preset that carries weights
    (`keras_conmim.list_presets()`)."""
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
        if path.endswith((".pth", ".pt", ".bin")):  # a torch zip: Keras' error would not say so
            raise ValueError(
                f"{path} is a PyTorch checkpoint, not a .keras file: convert it once with "
                f"keras_conmim.integrations.convert.from_torch({path!r}) (the release's ConMIM checkpoints; "
                "no pickle code runs), save the encoder with encoder.save('encoder.keras'), "
                "and pass that file.")
        if not zipfile.is_zipfile(path):  # Keras would call it "File not found"
            raise ValueError(f"{path} is not a .keras file: it is no zip archive (corrupt, "
                             "truncated, or another format). Pass a .keras file written by "
                             "keras_conmim, a preset folder, or a preset with weights.")
        model = keras.saving.load_model(path)
    vit, conmim = registered("ViT"), registered("ConMIM")
    if conmim is not None and isinstance(model, conmim):
        if which == "teacher" and model.objective == "pixel":
            raise ValueError(f"{path} holds a pixel-objective ConMIM, whose teacher is never "
                             "trained: pass which='student'.")
        return model.teacher_encoder if which == "teacher" else model.encoder
    if vit is not None and isinstance(model, vit):
        return model
    encoder = getattr(model, "encoder", None)
    if vit is not None and isinstance(encoder, vit):
        return encoder
    raise ValueError(f"{path} holds a {type(model).__name__}, which has no ViT encoder.")
