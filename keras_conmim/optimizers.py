"""Layer-wise learning-rate decay for fine-tuning (BEiT / ConMIM recipe)."""

import keras
from keras import ops

from keras_conmim.layers import PACKAGE


def layer_decay_scales(encoder, decay=0.65):
    """`{variable path: lr scale}` for a `ViT`, from `encoder.layer_groups()`:
    with L blocks, group 0 (patch embedding, CLS, mask token, an absolute
    position embedding) gets `decay ** (L + 1)`, block i gets
    `decay ** (L - i)`, and the last group (final norm, the shared relative
    position bias) 1. Variables not listed (a classifier's
    head) keep scale 1."""
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1], received {decay}.")
    groups = encoder.layer_groups()
    last = len(groups) - 1
    return {v.path: float(decay ** (last - g)) for g, group in enumerate(groups) for v in group}


@keras.saving.register_keras_serializable(package=PACKAGE)
class LayerDecayAdamW(keras.optimizers.AdamW):
    """AdamW whose learning rate (and weight decay step) is multiplied per
    variable by `lr_scales[variable.path]` (default 1).

    Args:
        lr_scales: dict. Variable path -> scale, e.g. `layer_decay_scales(...)`.
        **kwargs: `keras.optimizers.AdamW` arguments.
    """

    def __init__(self, lr_scales=None, **kwargs):
        super().__init__(**kwargs)
        self.lr_scales = dict(lr_scales or {})

    def build(self, var_list):
        # Backends hand update_step their own variable objects (TF: the
        # tf.Variable); key the scales the way the optimizer keys its slots.
        self._scale_by_key = {self._var_key(v): self.lr_scales.get(v.path, 1.0) for v in var_list}
        super().build(var_list)

    def _scale(self, variable):
        return self._scale_by_key.get(self._var_key(variable), 1.0)

    def update_step(self, gradient, variable, learning_rate):
        return super().update_step(gradient, variable, ops.multiply(learning_rate, self._scale(variable)))

    def _apply_weight_decay(self, variables):
        if self.weight_decay is None:
            return
        for variable in variables:
            if self._use_weight_decay(variable):
                lr = ops.cast(self.learning_rate, variable.dtype) * self._scale(variable)
                wd = ops.cast(self.weight_decay, variable.dtype)
                variable.assign(variable - variable * wd * lr)

    def get_config(self):
        config = super().get_config()
        config["lr_scales"] = self.lr_scales
        return config


def warmup_cosine(lr, total_steps, warmup_steps=0, min_lr=0.0):
    """The recipes' one learning-rate schedule (the release's): linear warmup
    from 0 to `lr` over `warmup_steps`, then a per-step cosine down to
    `min_lr` at `total_steps`. The warm-up is capped at `total_steps - 1`
    steps so the cosine always has at least one."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, received {total_steps}.")
    if lr <= 0 or min_lr < 0:
        raise ValueError(f"lr must be > 0 and min_lr >= 0, received lr={lr}, min_lr={min_lr}.")
    warmup = max(0, min(int(warmup_steps), total_steps - 1))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else lr, decay_steps=max(total_steps - warmup, 1),
        alpha=min_lr / lr, warmup_target=lr if warmup else None, warmup_steps=warmup)
