"""A user's first lines, each in a fresh interpreter started in an empty
folder outside the repository, on the backend of this run: the README's
one-liner, touching each public name first, importing each module first,
and each class's `from_preset`. (The suite's own import order hid a circular
import once: every test here starts from nothing.)"""

import os
import subprocess
import sys

import keras
import pytest

import keras_conmim as kc
from conftest import ROOT

BACKEND = keras.backend.backend()
SHIPPED = "conmim_vit_mini_p4_28_fmnist"


def fresh(code, tmp_path, timeout=600):
    """Run `code` in a new interpreter in `tmp_path` (not the repository),
    with this run's backend and no PYTHONPATH; returns stdout."""
    env = dict(os.environ, KERAS_BACKEND=BACKEND)
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=timeout)
    assert done.returncode == 0, f"{code}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.parametrize("code", [
    f"import keras_conmim as kc; m = kc.ViT.from_preset({SHIPPED!r}); print(m.count_params())",
    "from keras_conmim import ViT; print(ViT.__name__)",
    "import keras_conmim.models.vit; print(keras_conmim.models.vit.ViT.__name__)",
], ids=["readme-line", "from-import", "module-import"])
def test_the_first_line_a_user_types_works(code, tmp_path):
    out = fresh(code, tmp_path)
    assert out.strip()
    if "count_params" in code:
        assert int(out.split()[-1]) == kc.ViT.from_preset(SHIPPED).count_params()


def test_every_public_name_and_module_imports_first(tmp_path):
    """In one interpreter, for each public name and each module: forget the
    package (every keras_conmim module out of sys.modules), then touch that
    one first. Keras stays imported, as in a user's session."""
    modules = []
    for folder, _, files in os.walk(os.path.join(ROOT, "keras_conmim")):
        for name in sorted(files):
            if name.endswith(".py") and name != "__init__.py":
                rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3]
                modules.append(rel.replace(os.sep, "."))
    optional = {"keras_conmim.integrations.kerashub": "keras_hub", "keras_conmim.integrations.kerascv": "keras_cv",
                "keras_conmim.data.tf_decode": "tensorflow"}
    code = f"""
import importlib, importlib.util, sys
import keras

def forget():
    for name in [n for n in sys.modules if n == "keras_conmim" or n.startswith("keras_conmim.")]:
        del sys.modules[name]

done = []
for name in {sorted(kc.__all__)!r}:
    forget()
    exec(f"from keras_conmim import {{name}}")
    done.append(name)
for module in {modules!r}:
    need = {optional!r}.get(module)
    if need and importlib.util.find_spec(need) is None:
        continue
    forget()
    importlib.import_module(module)
    done.append(module)
forget()
import keras_conmim as kc
for name in kc.__all__:
    getattr(kc, name)
print(len(done))
"""
    out = fresh(code, tmp_path)
    assert int(out.split()[-1]) >= len(kc.__all__) + len(modules) - 3


def test_each_class_from_preset_first(tmp_path):
    code = f"""
import keras, keras_conmim as kc
# `import keras_conmim` registers every class: keras.saving opens the package's files
assert type(keras.saving.load_model(kc.presets.weights_path({SHIPPED!r}))).__name__ == "ViT"
vit = kc.ViT.from_preset("vit_mini_p4_28")
shipped = kc.ViT.from_preset({SHIPPED!r})
model = kc.ConMIM.from_preset({SHIPPED!r})
assert model.encoder.count_params() == shipped.count_params()
print("ok")
"""
    assert fresh(code, tmp_path).strip().endswith("ok")


@pytest.mark.skipif(BACKEND != "jax", reason="packaging: the backend does not matter, run once")
def test_a_built_wheel_carries_the_shipped_weights(tmp_path):
    """`pip install` of a wheel (not the editable checkout) and the preset
    with weights loads from any folder: the weights are package data."""
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), ROOT], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("keras_conmim-*.whl")
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    assert (target / "keras_conmim" / "weights" / f"{SHIPPED}.keras").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The wheel's copy first on the path, ahead of the editable checkout.
    code = (f"import sys; sys.path.insert(0, {str(target)!r})\n"
            "import keras_conmim as kc\n"
            f"assert kc.__file__.startswith({str(target)!r}), kc.__file__\n"
            f"m = kc.ViT.from_preset({SHIPPED!r})\n"
            "print(m.count_params())\n")
    assert int(fresh(code, elsewhere).split()[-1]) == kc.ViT.from_preset(SHIPPED).count_params()


def test_a_downstream_model_file_loads_after_a_bare_import(tmp_path):
    """A finished downstream run's model.keras (a KerasHub task on the
    package's `ViTPyramidBackbone`) loads with `keras.saving.load_model` after
    `import keras_conmim` alone: the adapter's registered name is known
    before `keras_conmim.integrations.kerashub` is imported (`keras_conmim.integrations.adapters`)."""
    pytest.importorskip("keras_hub")
    import keras_hub
    import numpy as np

    from conftest import tiny_vit
    from keras_conmim.integrations.kerashub import ViTPyramidBackbone

    backbone = ViTPyramidBackbone(tiny_vit(), image_shape=(16, 16, 1), max_level=4)
    model = keras_hub.models.DeepLabV3ImageSegmenter(  # as recipes/segment.py builds it
        backbone=keras_hub.models.DeepLabV3Backbone(
            image_encoder=backbone, spatial_pyramid_pooling_key="P4", upsampling_size=4,
            dilation_rates=[1, 2], low_level_feature_key="P2", image_shape=(16, 16, 1)),
        num_classes=3)
    path = str(tmp_path / "model.keras")
    model.save(path)
    x = np.random.default_rng(0).uniform(0, 255, (1, 16, 16, 1)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", keras.ops.convert_to_numpy(model(x)))
    out = fresh(f"""
import sys, keras, numpy as np
import keras_conmim
assert "keras_conmim.integrations.kerashub" not in sys.modules
m = keras.saving.load_model({path!r})
y = keras.ops.convert_to_numpy(m(np.load("x.npy")))
print(type(m.backbone.image_encoder).__name__, float(np.abs(y - np.load("y.npy")).max()))
""", tmp_path)
    name, diff = out.split()[-2:]
    assert name == "ViTPyramidBackbone" and float(diff) < 1e-5, out


def test_the_flat_paths_of_before_import_the_moved_modules(tmp_path):
    """#42 moved the modules into folders by role; code written against the
    flat paths of before (`keras_conmim.vit`, `from keras_conmim.kerashub import ...`)
    gets the moved module itself, with a DeprecationWarning naming the new
    path. The shipped weights (saved with the flat module paths) load by
    registered name in the other tests."""
    from keras_conmim.moved import MOVED

    optional = {"kerashub": "keras_hub", "kerascv": "keras_cv"}
    code = f"""
import importlib, importlib.util, sys, warnings
import keras

def forget():
    for name in [n for n in sys.modules if n == "keras_conmim" or n.startswith("keras_conmim.")]:
        del sys.modules[name]

checked = 0
for old, new in {MOVED!r}.items():
    need = {optional!r}.get(old)
    if need and importlib.util.find_spec(need) is None:
        continue
    forget()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module("keras_conmim." + old)
    assert module is sys.modules["keras_conmim." + new], (old, module)
    assert module.__name__ == module.__spec__.name == "keras_conmim." + new, old
    said = [str(w.message) for w in caught if w.category is DeprecationWarning]
    assert any(("keras_conmim." + new) in s for s in said), (old, said)
    checked += 1
forget()
import keras_conmim
from keras_conmim.vit import ViT  # flat path, on purpose
assert ViT is keras_conmim.ViT
assert keras_conmim.layers is sys.modules["keras_conmim.models.layers"]  # flat path, on purpose
print(checked)
"""
    assert int(fresh(code, tmp_path).split()[-1]) >= len(MOVED) - len(optional)
