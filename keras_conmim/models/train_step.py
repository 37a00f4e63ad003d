"""The one place where the backends differ: computing gradients and applying
the ConMIM update (optimizer step, then EMA teacher, then step counter).

JAX needs a stateless step (`train_step(state, data)`); TensorFlow and PyTorch
use stateful variables. Everything numeric is shared: the forward pass is
`ConMIM.pretext_outputs`, the momentum is `momentum_at`, the EMA is `ema`.
The backend is chosen once, at import.
"""

import math

import keras
from keras import ops

BACKEND = keras.backend.backend()


def momentum_at(step, total_steps, base_momentum=0.996, final_momentum=1.0):
    """Cosine teacher momentum at iteration `step` of `total_steps`:
    `final - (final - base) * (1 + cos(pi * step / T)) / 2` (spec, step 9),
    held at `final` after T steps and at `base` while T is 0 (unset)."""
    total = ops.cast(total_steps, "float32")
    progress = ops.clip(ops.cast(step, "float32") / ops.maximum(total, 1.0), 0.0, 1.0)
    cosine = final_momentum - (final_momentum - base_momentum) * (
        1.0 + ops.cos(math.pi * progress)) / 2.0
    # total_steps == 0: the schedule was never sized (train_on_batch without
    # total_steps); hold the base momentum rather than freeze the teacher.
    return ops.where(total > 0, cosine, base_momentum)


def ema(teacher_value, student_value, momentum):
    """`t <- m * t + (1 - m) * s`."""
    m = ops.cast(momentum, teacher_value.dtype)
    return m * teacher_value + (1.0 - m) * ops.cast(student_value, teacher_value.dtype)


JIT_MODES = ("auto", "on", "off")


def jit_compile_for(mode="auto"):
    """`Model.compile(jit_compile=...)` for a recipe's `--jit-compile`.

    `"on"`: compiled on every backend (XLA on JAX and TensorFlow,
    `torch.compile` on torch); `"off"`: op by op (debugging); `"auto"`: where
    it measurably helps: XLA on JAX, XLA on TensorFlow with a GPU/TPU (Keras'
    own rule), `torch.compile` on torch only with a CUDA device (on CPU it
    gained nothing measurable and takes minutes to compile). Always a bool,
    so it can also be set on a loaded model (`model.jit_compile = ...`)."""
    if mode not in JIT_MODES:
        raise ValueError(f"jit_compile mode must be one of {', '.join(JIT_MODES)}, "
                         f"received {mode!r}.")
    if mode != "auto":
        return mode == "on"
    if BACKEND == "torch":
        import torch

        return bool(torch.cuda.is_available())
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return any(d.device_type != "CPU" for d in tf.config.list_physical_devices())
    return True


def torch_graph_breaks():
    """`{reason: count}` of the graph breaks `torch.compile` met so far in
    this process (empty on other backends, or when none)."""
    if BACKEND != "torch":
        return {}
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover
        return {}
    return {str(k): int(v) for k, v in counters["graph_break"].items()}


def _images(data):
    x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
    return x


def _update_trackers(model, outputs):
    model.loss_tracker.update_state(outputs["loss"])
    model.accuracy_tracker.update_state(outputs["lookup_accuracy"])


def _stateful_update(model, grads, outputs):
    """Optimizer step, then the EMA teacher, then the step counter."""
    model.optimizer.apply(grads, model.trainable_variables)
    momentum = model.momentum()
    for student, teacher in model.ema_pairs():
        teacher.assign(ema(teacher.value, student.value, momentum))
    model.step_counter.assign_add(1)
    _update_trackers(model, outputs)
    return {**model.tracker_results(), "momentum": momentum}


if BACKEND == "tensorflow":
    import tensorflow as tf

    from keras_conmim.models.distribute import loss_scale

    def train_step(model, data):
        images = _images(data)
        with tf.GradientTape() as tape:
            outputs = model.pretext_outputs(images, training=True)
            # Under tf.distribute the optimizer sums the replicas' gradients:
            # each replica's mean loss counts 1 / replicas of the global mean.
            loss = model.optimizer.scale_loss(outputs["loss"] * loss_scale())
        grads = tape.gradient(loss, model.trainable_variables)
        return _stateful_update(model, grads, outputs)

    def test_step(model, data):
        _update_trackers(model, model.pretext_outputs(_images(data), training=False))
        return model.tracker_results()

elif BACKEND == "torch":
    import torch

    def train_step(model, data):
        images = _images(data)
        model.zero_grad()
        outputs = model.pretext_outputs(images, training=True)
        model.optimizer.scale_loss(outputs["loss"]).backward()
        grads = [v.value.grad for v in model.trainable_variables]
        with torch.no_grad():
            return _stateful_update(model, grads, outputs)

    def test_step(model, data):
        with torch.no_grad():
            outputs = model.pretext_outputs(_images(data), training=False)
            _update_trackers(model, outputs)
        return model.tracker_results()

elif BACKEND == "jax":
    import jax
    from keras import StatelessScope

    def _stateless_forward(model, trainable, non_trainable, images, training):
        mapping = list(zip(model.trainable_variables, trainable))
        mapping += list(zip(model.non_trainable_variables, non_trainable))
        with StatelessScope(state_mapping=mapping) as scope:
            outputs = model.pretext_outputs(images, training=training)
        new_non_trainable = []
        for ref, value in zip(model.non_trainable_variables, non_trainable):
            current = scope.get_current_value(ref)
            new_non_trainable.append(value if current is None else current)
        return outputs, new_non_trainable

    def _stateless_trackers(model, metrics_variables, outputs):
        mapping = list(zip(model.metrics_variables, metrics_variables))
        with StatelessScope(state_mapping=mapping) as scope:
            _update_trackers(model, outputs)
            logs = model.tracker_results()
        new = [scope.get_current_value(v) for v in model.metrics_variables]
        return logs, new

    def train_step(model, state, data):
        trainable, non_trainable, optimizer_variables, metrics_variables = state
        images = _images(data)

        def loss_fn(trainable_values, non_trainable_values):
            outputs, new_nt = _stateless_forward(
                model, trainable_values, non_trainable_values, images, True)
            with StatelessScope(state_mapping=list(
                    zip(model.optimizer.variables, optimizer_variables))):
                scaled = model.optimizer.scale_loss(outputs["loss"])
            return scaled, (outputs, new_nt)

        (_, (outputs, non_trainable)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(trainable, non_trainable)
        trainable, optimizer_variables = model.optimizer.stateless_apply(
            optimizer_variables, grads, trainable)

        # EMA teacher AFTER the optimizer step, on the updated student values.
        nt_index = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
        tr_index = {id(v): i for i, v in enumerate(model.trainable_variables)}
        step_i = nt_index[id(model.step_counter)]
        total_i = nt_index[id(model.total_steps)]
        momentum = momentum_at(non_trainable[step_i], non_trainable[total_i],
                               model.base_momentum, model.final_momentum)
        non_trainable = list(non_trainable)
        for student, teacher in model.ema_pairs():
            t = nt_index[id(teacher)]
            non_trainable[t] = ema(non_trainable[t], trainable[tr_index[id(student)]], momentum)
        non_trainable[step_i] = non_trainable[step_i] + 1

        logs, metrics_variables = _stateless_trackers(model, metrics_variables, outputs)
        logs["momentum"] = momentum
        return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)

    def test_step(model, state, data):
        trainable, non_trainable, metrics_variables = state
        outputs, non_trainable = _stateless_forward(
            model, trainable, non_trainable, _images(data), False)
        logs, metrics_variables = _stateless_trackers(model, metrics_variables, outputs)
        return logs, (trainable, non_trainable, metrics_variables)

else:  # pragma: no cover
    raise ImportError(
        f"keras_conmim supports the jax, tensorflow and torch backends; "
        f"KERAS_BACKEND is {BACKEND!r}."
    )
