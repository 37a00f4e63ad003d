"""keras_conmim: ConMIM (Masked Image Modeling with Denoising Contrast) in Keras 3.

The core imports only keras and numpy and runs on JAX, TensorFlow and PyTorch.
`import keras_conmim` imports Keras and every public class, so the backend is
the one `KERAS_BACKEND` names when the package is first imported (the recipes
set it from `--backend` before importing the package).

The package, by role (docs/design.md draws the import graph):

- `keras_conmim.models`: the core, keras + numpy only: the encoder (`vit`),
  the pre-training model (`conmim`), `layers`, `losses`, `masking`, `views`,
  `projector`, `train_step`, `optimizers`, `callbacks`, `distribute`,
  `resize`, and `loading` (any file of them by registered name);
- `keras_conmim.downstream`: what an encoder is for: `classifier`,
  `evaluation` (linear probe), `finetune_budget`, `pyramid`, the dense heads
  `instance` (`InstanceSegmenter`) and `upernet` (`UperNetSegmenter`),
  `metrics` (mIoU, COCO box / mask mAP);
- `keras_conmim.data`: image sources, labelled splits, canvases;
- `keras_conmim.runs`: the engine every recipe stands on (`runs.Run`, the run
  folder `runs.folder`), the typed recipes and their flags (`config`,
  `pretrain_config`, `finetuning`, `downstream`, `cli`), `pretraining`;
- `keras_conmim.integrations`: KerasHub (`kerashub`) and Keras-CV (`kerascv`),
  imported by name only (optional dependencies; their classes' registered
  names are known from `import keras_conmim` on, `adapters`), the release's
  checkpoints (`convert`), `export`;
- leaves: `presets`, `errors`, `atomic` (writes that never leave half a
  file), `version`.

The flat paths of before (`keras_conmim.vit`, `keras_conmim.kerashub`, ...)
still import, with a DeprecationWarning naming the new one (`moved`).
"""

from keras_conmim.version import __version__

from keras_conmim import moved

moved.install()

from keras_conmim import atomic, data, downstream, errors, integrations, models, presets, runs  # noqa: E402
from keras_conmim.downstream.classifier import ViTClassifier  # noqa: E402
from keras_conmim.downstream.instance import InstanceSegmenter  # noqa: E402
from keras_conmim.downstream.upernet import UperNetSegmenter  # noqa: E402
from keras_conmim.integrations import adapters  # noqa: E402,F401  (registers the adapters' names)
from keras_conmim.models.conmim import ConMIM  # noqa: E402
from keras_conmim.models.loading import load_encoder  # noqa: E402
from keras_conmim.models.losses import lookup_accuracy, patch_info_nce  # noqa: E402
from keras_conmim.models.masking import BlockMasking, RandomUnitMasking, get_mask_generator  # noqa: E402
from keras_conmim.models.optimizers import (  # noqa: E402
    LayerDecayAdamW, layer_decay_scales, pretrain_optimizer, warmup_cosine,
)
from keras_conmim.models.projector import ProjectionHead  # noqa: E402
from keras_conmim.models.train_step import momentum_at  # noqa: E402
from keras_conmim.models.views import PairedViews, normalize_images  # noqa: E402
from keras_conmim.models.vit import ViT  # noqa: E402
from keras_conmim.presets import PRESETS, list_presets  # noqa: E402

__all__ = [
    "BlockMasking", "ConMIM", "InstanceSegmenter", "LayerDecayAdamW", "PRESETS", "PairedViews", "ProjectionHead",
    "RandomUnitMasking", "UperNetSegmenter", "ViT", "ViTClassifier", "__version__", "get_mask_generator",
    "layer_decay_scales", "list_presets", "load_encoder", "lookup_accuracy", "momentum_at",
    "normalize_images", "patch_info_nce", "pretrain_optimizer", "warmup_cosine",
]


def __getattr__(name):
    """`keras_conmim.vit` and the other flat names of before: the moved module."""
    if name in moved.MOVED:
        return moved.load_moved(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
