"""The shared checks of the model tests, KerasHub's `run_layer_test` /
`run_backbone_test` / `run_preset_test` in spirit:

- `check_serializable`: output shape, config round trip, and a `.keras` save /
  load that gives the same outputs and weights (every registered class,
  tests/test_serialization.py);
- `check_fit_changes_weights`: one fit step gives a finite loss and moves the
  trainable weights (returns the ones that did not move);
- `check_preset`: a class's `from_preset` builds what the preset says and,
  saved to a preset folder, loads back equal."""

import json
import os

import numpy as np

from conftest import to_numpy


def _outputs(obj, inputs, call):
    out = call(obj, inputs) if call else obj(inputs)
    if isinstance(out, dict):
        return {k: to_numpy(v) for k, v in sorted(out.items())}
    if isinstance(out, (list, tuple)):
        return [to_numpy(v) for v in out]
    return to_numpy(out)


def _shapes(out):
    if isinstance(out, dict):
        return {k: tuple(v.shape) for k, v in out.items()}
    if isinstance(out, list):
        return [tuple(v.shape) for v in out]
    return tuple(out.shape)


def _assert_close(a, b, atol):
    if isinstance(a, dict):
        assert sorted(a) == sorted(b)
        for k in a:
            np.testing.assert_allclose(a[k], b[k], atol=atol, err_msg=k)
    elif isinstance(a, list):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, atol=atol)
    else:
        np.testing.assert_allclose(a, b, atol=atol)


def check_serializable(obj, inputs, expected_shape, tmp_path, call=None, atol=1e-6):
    """`obj` (a registered Keras layer or model) on `inputs`: its output has
    `expected_shape` (a tuple, or a dict / list of them); `from_config(get_config())`
    gives the same config, and through JSON too; `.keras` save / load gives the
    same class, config, weights and outputs (the next call's, for random layers). `call(obj, inputs)` replaces
    `obj(inputs)` where the call needs more (e.g. `training=False`)."""
    import keras

    out = _outputs(obj, inputs, call)
    assert _shapes(out) == expected_shape, (_shapes(out), expected_shape)

    def normal(config):  # nested Keras objects (a task's backbone) as their JSON configs
        return json.loads(json.dumps(keras.saving.serialize_keras_object(config)))

    config = normal(obj.get_config())
    clone = type(obj).from_config(obj.get_config())
    assert normal(clone.get_config()) == config
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(obj)))
    assert serialized["registered_name"].startswith("keras_conmim>"), serialized["registered_name"]
    revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is type(obj) and normal(revived.get_config()) == config

    path = os.path.join(str(tmp_path), f"{type(obj).__name__}.keras")
    keras.saving.save_model(obj, path)
    loaded = keras.saving.load_model(path)  # safe mode
    assert type(loaded) is type(obj) and normal(loaded.get_config()) == config
    assert len(loaded.weights) == len(obj.weights)
    for a, b in zip(obj.weights, loaded.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=a.path)
    # The next call of each: equal also for random layers, whose stream
    # positions the file keeps.
    _assert_close(_outputs(loaded, inputs, call), _outputs(obj, inputs, call), atol)
    return loaded


def check_fit_changes_weights(model, x, y=None, batch_size=None, train_on_batch=False):
    """One optimizer step of the compiled `model` on `(x, y)` (`fit` over one
    batch, or `train_on_batch`): the loss is finite and some trainable weight
    moved. Returns the paths of the trainable weights that did not move."""
    before = [to_numpy(v).copy() for v in model.trainable_weights]
    if train_on_batch:
        loss = model.train_on_batch(x, y)
        loss = loss[0] if isinstance(loss, (list, tuple)) else loss
    else:
        size = batch_size or len(x["images"] if isinstance(x, dict) else x)
        loss = model.fit(x, y, batch_size=size, epochs=1, verbose=0).history["loss"][-1]
    assert np.isfinite(loss), loss
    after = [to_numpy(v) for v in model.trainable_weights]
    still = [v.path for v, a, b in zip(model.trainable_weights, before, after) if np.allclose(a, b)]
    assert len(still) < len(before), "no trainable weight moved"
    return still


def check_preset(cls, preset, inputs, expected_shape, tmp_path, atol=1e-6, **kwargs):
    """`cls.from_preset(preset, **kwargs)` gives a `cls` whose output on
    `inputs` has `expected_shape`; saved to a preset folder
    (`save_to_preset`) it loads back through `from_preset` with the same
    weights and outputs. Returns the model."""
    model = cls.from_preset(preset, **kwargs)
    assert isinstance(model, cls), type(model)
    out = _outputs(model, inputs, None)
    assert _shapes(out) == expected_shape, (_shapes(out), expected_shape)
    folder = os.path.join(str(tmp_path), f"{type(model).__name__}_preset")
    model.save_to_preset(folder)
    loaded = cls.from_preset(folder)
    assert type(loaded) is type(model)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=a.path)
    _assert_close(_outputs(loaded, inputs, None), out, atol)
    return model
