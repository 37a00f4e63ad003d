"""keras_conmim: ConMIM (Masked Image Modeling with Denoising Contrast) in Keras 3.

The core imports only keras and numpy and runs on JAX, TensorFlow and PyTorch.

Importing the package imports no Keras by itself: the public names below load
their modules on first use, so the keras-free parts (`keras_conmim.presets`,
`keras_conmim.run_folder`, `keras_conmim.pretrain_config`, `keras_conmim.finetune_budget`,
`keras_conmim.data.geometry`) can be read, and a recipe's flags checked, before
the Keras backend is chosen. The package's Keras classes are registered for
`keras.saving.load_model` as soon as both `keras_conmim` and `keras` are
imported, in either order (`register_all()` does it explicitly).
"""

import importlib
import importlib.util
import sys

__version__ = "0.1.0"

# Public name -> the module that defines it.
_PUBLIC = {
    "ConMIM": "conmim",
    "lookup_accuracy": "losses", "patch_info_nce": "losses",
    "BlockMasking": "masking", "RandomUnitMasking": "masking", "get_mask_generator": "masking",
    "PRESETS": "presets", "list_presets": "presets",
    "ProjectionHead": "projector",
    "load_encoder": "saving",
    "momentum_at": "train_step",
    "LayerDecayAdamW": "optimizers", "layer_decay_scales": "optimizers", "warmup_cosine": "optimizers",
    "PairedViews": "views", "normalize_images": "views",
    "ViT": "vit",
}

# Subpackages reachable as attributes (`kc.data.from_idx`, `kc.evaluation`),
# imported on first use: kerashub / kerascv pull in KerasHub / Keras-CV, export
# pulls in TensorFlow or ONNX tools only when called.
SUBMODULES = ("callbacks", "classifier", "convert", "data", "distribute", "downstream_metrics",
              "evaluation", "export", "finetune_budget", "finetune_run", "kerascv", "kerashub",
              "layers", "losses", "masking", "optimizers", "presets", "pretrain_config", "projector",
              "pyramid", "resize", "run_folder", "saving", "train_step", "views", "vit")

# The modules whose classes `.keras` files name (KerasHub / Keras-CV wrappers
# register when `keras_conmim.kerashub` / `.kerascv` are imported).
_REGISTERING = ("layers", "projector", "vit", "masking", "views", "optimizers", "conmim",
                "classifier", "export")


def register_all():
    """Import every module that registers a Keras class (imports Keras)."""
    for name in _REGISTERING:
        importlib.import_module(f"keras_conmim.{name}")


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f"keras_conmim.{_PUBLIC[name]}"), name)
        globals()[name] = value
        return value
    if name in SUBMODULES:
        return importlib.import_module(f"keras_conmim.{name}")
    raise AttributeError(f"module 'keras_conmim' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBMODULES) | set(_PUBLIC))


class _RegisterAfterKeras:
    """A meta-path finder that waits for `import keras` and then registers the
    package's classes, so `import keras_conmim; import keras;
    keras.saving.load_model(...)` works without importing Keras here first
    (which would fix the backend before a recipe has read `--backend`)."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("keras")
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader

        class Loader:
            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                loader.exec_module(module)
                register_all()

        spec.loader = Loader()
        return spec


if isinstance(sys.modules.get("keras"), type(sys)):
    register_all()
elif "keras" not in sys.modules:
    sys.meta_path.insert(0, _RegisterAfterKeras())

__all__ = sorted(_PUBLIC) + ["register_all"]
