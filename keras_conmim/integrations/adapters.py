"""The optional adapters' registered names, known from `import keras_conmim`
on: `keras_conmim.integrations.kerashub` needs KerasHub and `keras_conmim.integrations.kerascv`
Keras-CV, so the package does not import them (KerasHub alone adds seconds
to every import). Each of their public classes is registered here under its
own name (`keras_conmim>ViTPyramidBackbone`, ...) by a stand-in whose
`from_config` imports the adapter, which registers the real class over it,
and builds that. So `keras.saving.load_model("model.keras")` of a downstream
run works after a bare `import keras_conmim`, as for every other class.
Keras and the standard library only.
"""

import importlib

import keras

from keras_conmim.models.layers import PACKAGE

# registered class name -> the adapter module that defines it
DEFERRED = {
    "ViTPyramidBackbone": "keras_conmim.integrations.kerashub",
    "ViTPyramidImageClassifier": "keras_conmim.integrations.kerashub",
    "ViTCVBackbone": "keras_conmim.integrations.kerascv",
    "KerasHubCVBackbone": "keras_conmim.integrations.kerascv",
    "NonMaxSuppression": "keras_conmim.integrations.kerascv",
}


def adapter_class(name):
    """The real class registered as `keras_conmim>name`, importing its
    adapter (an ImportError names the package to install)."""
    module = DEFERRED[name]
    try:
        # the module itself, not the registry: a load in progress reads a
        # copy of the registry made before the import
        return getattr(importlib.import_module(module), name)
    except ImportError as e:
        extra = "keras-hub" if module.endswith("kerashub") else "keras-cv"
        raise ImportError(f"keras_conmim>{name} is defined in {module}, which needs {extra} "
                          f"(pip install {extra}): {e}") from None


def _stand_in(name):
    def from_config(cls, config):
        return adapter_class(name).from_config(config)

    def get_config(self):  # never instantiated; registration asks for the method
        raise TypeError(f"{name} is a stand-in; import {DEFERRED[name]}")

    return type(name, (), {"from_config": classmethod(from_config), "get_config": get_config,
                           "__doc__": f"Stand-in: builds {DEFERRED[name]}.{name}."})


def register_deferred():
    """Register a stand-in for each adapter class not registered yet."""
    for name in DEFERRED:
        if keras.saving.get_registered_object(f"{PACKAGE}>{name}") is None:
            keras.saving.register_keras_serializable(package=PACKAGE, name=name)(_stand_in(name))


register_deferred()
