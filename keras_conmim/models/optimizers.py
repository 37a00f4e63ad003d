"""Layer-wise learning-rate decay for fine-tuning (BEiT / ConMIM recipe)."""

import keras
from keras import ops

from keras_conmim.models.layers import PACKAGE
from keras_conmim.presets import get_preset


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


# The recipe keys the pre-training optimizer reads.
OPTIMIZER_KEYS = ("epochs", "lr", "min_lr", "warmup_epochs", "weight_decay", "clip_norm")


def pretrain_optimizer(recipe, steps_per_epoch, **overrides):
    """The pre-training optimizer of a recipe, as the release builds it:
    AdamW (betas 0.9 / 0.98, eps 1e-8) with `warmup_cosine` over
    `epochs x steps_per_epoch` steps, the recipe's weight decay (ConMIM's
    `compile` keeps biases, norms, tokens and position tables out of it) and
    global-norm clipping when `clip_norm` is set.

    `recipe`: a preset name (its `PRESETS[name]["pretrain"]`) or a dict with
    the keys `epochs`, `lr`, `min_lr`, `warmup_epochs`, `weight_decay`,
    `clip_norm`; `overrides` replace any of them.

        model = keras_conmim.ConMIM.from_preset("vit_mini_p4_28")
        model.compile(optimizer=keras_conmim.pretrain_optimizer(
            "vit_mini_p4_28", steps_per_epoch=len(images) // 32))
    """
    if isinstance(recipe, str):
        recipe = get_preset(recipe)["pretrain"]
    unknown = sorted(set(overrides) - set(OPTIMIZER_KEYS))
    if unknown:
        raise ValueError(f"pretrain_optimizer: unknown settings {unknown}; valid: "
                         f"{', '.join(OPTIMIZER_KEYS)}.")
    values = {key: recipe.get(key) for key in OPTIMIZER_KEYS}
    values.update(overrides)
    if steps_per_epoch < 1 or values["epochs"] < 1:
        raise ValueError(f"Need steps_per_epoch >= 1 and epochs >= 1, received "
                         f"steps_per_epoch={steps_per_epoch}, epochs={values['epochs']}.")
    total = int(steps_per_epoch * values["epochs"])
    schedule = warmup_cosine(values["lr"], total, values["warmup_epochs"] * steps_per_epoch,
                             values["min_lr"])
    return keras.optimizers.AdamW(schedule, weight_decay=values["weight_decay"], beta_1=0.9,
                                  beta_2=0.98, epsilon=1e-8, global_clipnorm=values["clip_norm"])
