"""The package's modules moved into folders by role (#42); the flat paths
still import, warn once, and give the module itself:

    import keras_conmim.vit        # DeprecationWarning: now keras_conmim.models.vit
    from keras_conmim.kerashub import ViTPyramidBackbone   # the same class as before

`.keras` files name their classes by registered name (`keras_conmim>ViT`), so
files written before the move load whatever module path they recorded.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

PACKAGE = "keras_conmim"
MOVED = {  # old module name: where it lives now
    "layers": "models.layers", "vit": "models.vit", "conmim": "models.conmim",
    "projector": "models.projector", "resize": "models.resize", "loading": "models.loading",
    "train_step": "models.train_step", "losses": "models.losses", "masking": "models.masking",
    "views": "models.views", "optimizers": "models.optimizers", "distribute": "models.distribute",
    "callbacks": "models.callbacks",
    "classifier": "downstream.classifier", "evaluation": "downstream.evaluation",
    "finetune_budget": "downstream.finetune_budget", "instance": "downstream.instance",
    "upernet": "downstream.upernet", "downstream_metrics": "downstream.metrics",
    "pyramid": "downstream.pyramid",
    "kerashub": "integrations.kerashub", "kerascv": "integrations.kerascv",
    "adapters": "integrations.adapters", "convert": "integrations.convert",
    "export": "integrations.export",
    "run_config": "runs.config", "pretrain_config": "runs.pretrain_config",
    "finetune_run": "runs.finetuning", "downstream_run": "runs.downstream", "cli": "runs.cli",
}


def new_name(old):
    """'keras_conmim.vit' -> 'keras_conmim.models.vit'; None for a module that did not move."""
    prefix, _, leaf = old.partition(".")
    return f"{PACKAGE}.{MOVED[leaf]}" if prefix == PACKAGE and leaf in MOVED else None


def load_moved(old):
    """The module now at `old`'s new place (imported), after a DeprecationWarning."""
    new = new_name(old)
    warnings.warn(f"{old} moved to {new}; import it from there (the old path is an alias).",
                  DeprecationWarning, stacklevel=3)
    return importlib.import_module(new)


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `keras_conmim.<old name>` and hands out the moved module itself."""

    def find_spec(self, fullname, path=None, target=None):
        if new_name(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def __init__(self):
        self.own_specs = {}

    def create_module(self, spec):
        module = load_moved(spec.name)
        self.own_specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module):
        # the import system set the alias's spec on the module: give it back its own
        module.__spec__ = self.own_specs.pop(module.__name__)


def install():
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())  # before any finder that would find an old file
