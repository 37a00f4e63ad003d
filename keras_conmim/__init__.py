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

__all__ = [
    "BlockMasking", "ConMIM", "LayerDecayAdamW", "PRESETS", "PairedViews",
    "ProjectionHead", "RandomUnitMasking", "ViT", "get_mask_generator",
    "layer_decay_scales", "load_encoder", "lookup_accuracy", "momentum_at", "normalize_images",
    "patch_info_nce",
]
