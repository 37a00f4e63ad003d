"""keras_conmim: ConMIM (Masked Image Modeling with Denoising Contrast) in Keras 3.

The core imports only keras and numpy and runs on JAX, TensorFlow and PyTorch.
"""

from keras_conmim.conmim import ConMIM
from keras_conmim.losses import lookup_accuracy, patch_info_nce
from keras_conmim.masking import BlockMasking, RandomUnitMasking, get_mask_generator
from keras_conmim.presets import PRESETS
from keras_conmim.projector import ProjectionHead
from keras_conmim.saving import load_encoder
from keras_conmim.train_step import momentum_at
from keras_conmim.optimizers import LayerDecayAdamW, layer_decay_scales
from keras_conmim.views import PairedViews, normalize_images
from keras_conmim.vit import ViT

__version__ = "0.1.0"

# Subpackages reachable as attributes (`kc.data.from_idx`, `kc.evaluation`),
# imported on first use: kerashub / kerascv pull in KerasHub / Keras-CV, export
# pulls in TensorFlow or ONNX tools only when called.
SUBMODULES = ("callbacks", "classifier", "convert", "data", "distribute", "downstream_metrics",
              "evaluation", "export", "finetune_budget", "kerascv", "kerashub", "layers", "losses", "masking", "optimizers",
              "presets", "projector", "pyramid", "resize", "saving", "train_step", "views", "vit")


def __getattr__(name):
    if name in SUBMODULES:
        import importlib

        return importlib.import_module(f"keras_conmim.{name}")
    raise AttributeError(f"module 'keras_conmim' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(SUBMODULES))

__all__ = [
    "BlockMasking", "ConMIM", "LayerDecayAdamW", "PRESETS", "PairedViews",
    "ProjectionHead", "RandomUnitMasking", "ViT", "get_mask_generator",
    "layer_decay_scales", "load_encoder", "lookup_accuracy", "momentum_at", "normalize_images",
    "patch_info_nce",
]
