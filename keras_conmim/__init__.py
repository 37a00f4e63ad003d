"""keras_conmim: ConMIM (Masked Image Modeling with Denoising Contrast) in Keras 3.

The core imports only keras and numpy and runs on JAX, TensorFlow and PyTorch.
`import keras_conmim` imports Keras and every public class, so the backend is
the one `KERAS_BACKEND` names when the package is first imported (the recipes
set it from `--backend` before importing the package).

Modules, from the bottom up (docs/design.md draws the graph):

- leaves, standard library or numpy: `presets`, `errors`, `finetune_budget`,
  `downstream_metrics`, `data.geometry`;
- layers and ops: `distribute`, `layers`, `losses`, `masking`, `views`,
  `projector`, `optimizers`, `train_step`, `atomic` (writes that never leave
  half a file);
- the encoder: `vit`; around it `resize`, `evaluation`, `classifier`,
  `callbacks`, `export`;
- the pre-training model: `conmim`;
- dense task heads on any pyramid backbone: `instance` (`InstanceSegmenter`,
  boxes and a mask per object), `upernet` (`UperNetSegmenter`);
- loading any file of them by registered name: `loading` (below `vit`: it
  imports no model class);
- runs (what the recipes stand on): `runs` (the engine: `runs.Run`, the
  run folder `runs.folder`), `run_config`, `pretrain_config`,
  `finetune_run`, `downstream_run`, `cli`;
- adapters with optional dependencies, imported by name only:
  `keras_conmim.kerashub` (KerasHub), `keras_conmim.kerascv` (Keras-CV),
  `keras_conmim.pyramid`; their classes' registered names are known from
  `import keras_conmim` on (`adapters`), so their `.keras` files load.
"""

from keras_conmim.version import __version__

from keras_conmim import adapters, data, errors, presets
from keras_conmim import (
    atomic, callbacks, classifier, convert, distribute, downstream_metrics, evaluation, export,
    finetune_budget, instance, layers, loading, losses, masking, optimizers, projector, resize,
    runs, train_step, upernet, views, vit,
)
from keras_conmim.classifier import ViTClassifier
from keras_conmim.conmim import ConMIM
from keras_conmim.instance import InstanceSegmenter
from keras_conmim.loading import load_encoder
from keras_conmim.losses import lookup_accuracy, patch_info_nce
from keras_conmim.masking import BlockMasking, RandomUnitMasking, get_mask_generator
from keras_conmim.optimizers import (
    LayerDecayAdamW, layer_decay_scales, pretrain_optimizer, warmup_cosine,
)
from keras_conmim.presets import PRESETS, list_presets
from keras_conmim.projector import ProjectionHead
from keras_conmim.train_step import momentum_at
from keras_conmim.upernet import UperNetSegmenter
from keras_conmim.views import PairedViews, normalize_images
from keras_conmim.vit import ViT

__all__ = [
    "BlockMasking", "ConMIM", "InstanceSegmenter", "LayerDecayAdamW", "PRESETS", "PairedViews", "ProjectionHead",
    "RandomUnitMasking", "UperNetSegmenter", "ViT", "ViTClassifier", "__version__", "get_mask_generator",
    "layer_decay_scales", "list_presets", "load_encoder", "lookup_accuracy", "momentum_at",
    "normalize_images", "patch_info_nce", "pretrain_optimizer", "warmup_cosine",
]
