"""The ConMIM pre-training model: student, EMA teacher, views, masks, loss."""

import warnings

import keras
from keras import ops

from keras_conmim.models import train_step as backend_step
from keras_conmim.models.callbacks import NaNGuard
from keras_conmim.models.layers import PACKAGE, config_with_layers
from keras_conmim.models.losses import info_nce_and_accuracy, masked_pixel_l1, patchify
from keras_conmim.models.masking import get_mask_generator
from keras_conmim.presets import get_preset
from keras_conmim.models.projector import ProjectionHead
from keras_conmim.models.views import PairedViews
from keras_conmim.models.vit import ViT


OBJECTIVES = ("contrast", "pixel")
NAN_POLICIES = ("raise", "ignore")
# The pre-training recipe's values that shape the model (`ConMIM.from_preset`
# applies them; the rest of a recipe is the optimizer's and the run's).
MODEL_RECIPE_KEYS = ("mask", "mask_ratio", "mask_unit", "mask_token_position", "views",
                     "crop_scale_min", "temperature", "base_momentum", "final_momentum")


_SIZE_WARNED = set()  # (images' size, encoder's size) pairs already warned about


def check_images(images, image_shape, dtype=None):
    """The contract of `ConMIM`'s input: uint8 `[B, H, W, C]` with the
    encoder's channel count. A ValueError that says how to convert, instead
    of a model that trains on constant inputs (floats in [0, 1]) or an einsum
    error (channels first). Images of another height and width are accepted
    on purpose: the views crop and resize every image to the encoder's size
    (as the release does for ImageNet photos of any size); a warning says so
    once. `dtype`: the caller's own dtype when the backend has converted it
    already (JAX turns int64 into int32)."""
    dtype = dtype or keras.backend.standardize_dtype(images.dtype)
    channels = image_shape[-1]
    if dtype != "uint8":
        raise ValueError(
            f"ConMIM takes uint8 images in [0, 255], received dtype {dtype}. Floats in [0, 1] "
            "would train on nearly constant inputs. Convert with "
            "np.clip(np.round(x * 255), 0, 255).astype('uint8') for [0, 1] floats, or "
            "np.clip(x, 0, 255).astype('uint8') for [0, 255] values.")
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[-1] != channels:
        hint = ""
        if len(shape) == 4 and shape[1] == channels:
            hint = " This looks channels-first: transpose with x.transpose(0, 2, 3, 1)."
        elif len(shape) == 3:
            hint = " A channel axis is missing: add it with x[..., None]."
        elif len(shape) == 4 and shape[-1] == 3 and channels == 1:
            hint = (" These are RGB images for a grayscale encoder: convert with "
                    "x.mean(-1, keepdims=True).round().astype('uint8'), or build the encoder "
                    "with image_shape=(H, W, 3).")
        elif len(shape) == 4 and shape[-1] == 1 and channels == 3:
            hint = (" These are grayscale images for an RGB encoder: repeat the channel with "
                    "np.repeat(x, 3, axis=-1), or build the encoder with image_shape=(H, W, 1).")
        raise ValueError(
            f"ConMIM takes images shaped [B, H, W, C] with C={channels} (channels last), "
            f"received shape {shape}.{hint}")
    sizes = (tuple(shape[1:3]), tuple(image_shape[:2]))
    if shape[1] is not None and sizes[0] != sizes[1] and sizes not in _SIZE_WARNED:
        _SIZE_WARNED.add(sizes)
        warnings.warn(
            f"ConMIM: the images are {shape[1]}x{shape[2]}, the encoder's size is "
            f"{image_shape[0]}x{image_shape[1]}: the views crop and resize each image to it "
            "(on purpose, as for photos of any size). Resize them beforehand to silence this.",
            stacklevel=2)


def check_fit_data(x):
    """What `ConMIM.fit` can say about numpy / array input before Keras
    converts it: empty data, and the array's own dtype (JAX would report
    int64 as int32)."""
    if x is None or not hasattr(x, "shape") or not hasattr(x, "dtype"):
        return None
    if len(x.shape) >= 1 and x.shape[0] == 0:
        raise ValueError("ConMIM.fit: the data is empty (0 images). Pass at least one batch of "
                         "uint8 images [B, H, W, C].")
    return str(getattr(x.dtype, "name", x.dtype))


def _clone(layer, name):
    config = dict(layer.get_config(), name=name)
    return layer.__class__.from_config(config)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConMIM(keras.Model):
    """ConMIM pre-training: masked image modeling with denoising contrast.

    `fit()` takes uint8 images `[B, H, W, C]` (no labels). Each step, on the
    device and inside the compiled function: paired views (shared crop/flip,
    strong photometric noise for the teacher), patch masks, the student
    encodes the masked weak view, the EMA teacher the whole strong view, both
    through their projection heads; the patch InfoNCE is minimised, the
    optimizer updates the student, then the teacher moves by
    `t <- m t + (1 - m) s` with m on a cosine from `base_momentum` to
    `final_momentum` over `total_steps`.

    Args:
        encoder: `ViT`. The student encoder (the teacher is a copy of it).
        projector: `ProjectionHead` or None. None uses the release's head
            (4096 hidden, 256 out): on small encoders pass a smaller one.
        mask_generator: `"random"`, `"block"` or a mask generator layer.
            Defaults to `"random"` (the release's random units, ratio 0.75,
            units of 2x2 patches).
        views: `PairedViews` or None (docs/method.md's defaults at the encoder's
            image size).
        temperature: float. InfoNCE temperature. Defaults to `0.1`.
        base_momentum: float. Teacher momentum at step 0. Defaults to `0.996`.
        final_momentum: float. Teacher momentum at the last step. Defaults
            to `1.0`.
        total_steps: int or None. Length of the momentum schedule. None lets
            the first `fit()` set it to epochs x steps per epoch.
        seed: int or None. Seeds the default views and mask generator.
        objective: str. `"contrast"` (ConMIM's patch InfoNCE) or `"pixel"`
            (the SimMIM baseline: a linear decoder regresses the weak view's
            normalised pixels of masked patches, L1; the projector and
            teacher are left out of the step; `lookup_accuracy` reads 0).
            Defaults to `"contrast"`.

    Ablations in the paper's sense: `base_momentum=final_momentum=0` makes
    the teacher the current student under stop-gradient (no momentum);
    `views=PairedViews(..., symmetric=True)` perturbs both views; an encoder
    built with `position_embedding="absolute"` swaps the relative bias for
    absolute positions.

    Example:

    ```python
    encoder = keras_conmim.ViT.from_preset("vit_mini_p4_28")
    model = keras_conmim.ConMIM(
        encoder, projector=keras_conmim.ProjectionHead(512, 128))
    model.compile(optimizer=keras.optimizers.AdamW(5e-4, weight_decay=0.05))
    model.fit(images_uint8, batch_size=64, epochs=2)
    model.teacher_encoder.save("saved_models/teacher.keras")
    ```
    """

    def __init__(
        self,
        encoder,
        projector=None,
        mask_generator="random",
        views=None,
        temperature=0.1,
        base_momentum=0.996,
        final_momentum=1.0,
        total_steps=None,
        seed=None,
        objective="contrast",
        **kwargs,
    ):
        kwargs.setdefault("name", "conmim")
        super().__init__(**kwargs)
        if not isinstance(encoder, ViT):
            raise ValueError(
                f"encoder must be a keras_conmim.ViT, received {type(encoder).__name__}."
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, received {temperature}.")
        if not 0 <= base_momentum <= final_momentum <= 1:
            raise ValueError(
                "Need 0 <= base_momentum <= final_momentum <= 1, received "
                f"base_momentum={base_momentum}, final_momentum={final_momentum}."
            )
        if objective not in OBJECTIVES:
            raise ValueError(
                f"Unknown objective {objective!r}. Valid: {', '.join(OBJECTIVES)}.")
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"total_steps must be >= 1 or None, received {total_steps}.")
        self.encoder = encoder
        self.projector = projector if projector is not None else ProjectionHead()
        if isinstance(mask_generator, str):
            mask_generator = get_mask_generator(mask_generator, encoder.grid_size, seed=seed)
        if tuple(mask_generator.grid_size) != tuple(encoder.grid_size):
            raise ValueError(
                f"mask_generator.grid_size={mask_generator.grid_size} does not match "
                f"the encoder's patch grid {encoder.grid_size}."
            )
        self.mask_generator = mask_generator
        if views is None:
            views = PairedViews(
                encoder.image_shape[:2], seed=None if seed is None else seed + 1)
        if tuple(views.image_size) != tuple(encoder.image_shape[:2]):
            raise ValueError(
                f"views.image_size={views.image_size} does not match the encoder's "
                f"image size {encoder.image_shape[:2]}."
            )
        self.views = views
        self.temperature = temperature
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum
        self.seed = seed
        self.objective = objective
        self._total_steps_arg = total_steps

        token_shape = (None, encoder.num_patches + 1, encoder.hidden_dim)
        if not self.projector.built:
            self.projector.build(token_shape)
        self.teacher_encoder = _clone(encoder, "teacher_encoder")
        self.teacher_projector = _clone(self.projector, "teacher_projector")
        self.teacher_projector.build(token_shape)
        self.teacher_encoder.set_weights(encoder.get_weights())
        self.teacher_projector.set_weights(self.projector.get_weights())
        self.teacher_encoder.trainable = False
        self.teacher_projector.trainable = False
        if objective == "pixel":
            self.projector.trainable = False  # unused: keep it out of the optimizer
            channels = encoder.image_shape[-1]
            self.pixel_decoder = keras.layers.Dense(
                encoder.patch_size**2 * channels, dtype=self.dtype_policy, name="pixel_decoder")
            self.pixel_decoder.build((None, encoder.num_patches, encoder.hidden_dim))

        self.step_counter = self.add_weight(
            shape=(), dtype="int32", initializer="zeros", trainable=False,
            name="step_counter")
        self.total_steps = self.add_weight(
            shape=(), dtype="float32", trainable=False, name="total_steps",
            initializer=keras.initializers.Constant(float(total_steps or 0)))
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="lookup_accuracy")
        self.built = True

    @classmethod
    def from_preset(cls, name, load_weights=True, encoder_kwargs=None, **kwargs):
        """The preset's pre-training model: its encoder and matching projection
        head, with every value of its pre-training recipe
        (`PRESETS[name]["pretrain"]`) that shapes the model applied: the mask
        generator (`mask`, `mask_ratio`, `mask_unit`), the mask tokens'
        position code (`mask_token_position`), the views (`views`,
        `crop_scale_min`), `temperature`, `base_momentum` and
        `final_momentum`. `recipes/pretrain.py` builds its model through this
        call; `keras_conmim.pretrain_optimizer(name, steps_per_epoch)` is the
        recipe's optimizer.

        Keyword arguments override: any of those recipe keys
        (`views` may also be a `PairedViews`, `mask_generator` a mask layer),
        `symmetric_views`, and `ConMIM`'s own arguments (`projector`,
        `total_steps`, `seed`, `objective`). `encoder_kwargs` go to
        `ViT.from_preset` (e.g. `image_shape`, `patch_size`). For a preset
        that carries weights, student and EMA teacher both start from them
        (the projection heads start fresh: only encoders are shipped)."""
        preset = get_preset(name)
        recipe = {key: kwargs.pop(key) if key in kwargs else preset["pretrain"][key]
                  for key in MODEL_RECIPE_KEYS}
        symmetric = bool(kwargs.pop("symmetric_views", False))
        seed = kwargs.get("seed")
        encoder = ViT.from_preset(name, load_weights=load_weights, **{
            "mask_token_position": recipe["mask_token_position"], **(encoder_kwargs or {})})
        kwargs.setdefault("projector", ProjectionHead(**preset["projector"]))
        if "mask_generator" not in kwargs:
            mask_kwargs = {"mask_ratio": recipe["mask_ratio"]} if recipe["mask_ratio"] else {}
            if recipe["mask"] == "random":
                mask_kwargs["unit_size"] = recipe["mask_unit"]
            kwargs["mask_generator"] = get_mask_generator(
                recipe["mask"], encoder.grid_size, seed=seed, **mask_kwargs)
        views = recipe["views"]
        if not isinstance(views, PairedViews):
            views = {key: tuple(value) if isinstance(value, list) else value
                     for key, value in dict(views or {}).items()}
            views = PairedViews(encoder.image_shape[:2], crop_scale=(recipe["crop_scale_min"], 1.0),
                                symmetric=symmetric, seed=None if seed is None else seed + 1,
                                **views)
        return cls(encoder, views=views, temperature=recipe["temperature"],
                   base_momentum=recipe["base_momentum"],
                   final_momentum=recipe["final_momentum"], **kwargs)

    # ---- the forward pass shared by every backend --------------------------

    def pretext_outputs(self, images, training=False):
        """Views and masks from uint8 `images`, then the pretext loss."""
        check_images(images, self.encoder.image_shape)
        student_view, teacher_view = self.views(images)
        patch_mask = self.mask_generator(images)
        return self.pretext_loss(student_view, teacher_view, patch_mask, training)

    def pretext_loss(self, student_view, teacher_view, patch_mask, training=False):
        """Loss and lookup accuracy for given views and mask (float views,
        already normalised). Returns a dict with `loss` and `lookup_accuracy`."""
        student_tokens = self.encoder(student_view, patch_mask=patch_mask, training=training)
        if self.objective == "pixel":
            predicted = self.pixel_decoder(student_tokens[:, 1:])
            target = patchify(student_view, self.encoder.patch_size)
            loss = masked_pixel_l1(predicted, target, patch_mask)
            return {"loss": loss, "lookup_accuracy": ops.zeros_like(loss)}
        q = self.projector(student_tokens, training=training)[:, 1:]
        teacher_tokens = self.teacher_encoder(teacher_view, training=False)
        # The release runs the teacher's head in train mode (batch statistics).
        k = ops.stop_gradient(self.teacher_projector(teacher_tokens, training=training))[:, 1:]
        loss, accuracy = info_nce_and_accuracy(q, k, patch_mask, self.temperature)
        return {"loss": loss, "lookup_accuracy": accuracy}

    def call(self, images, training=False):
        return self.pretext_outputs(images, training=training)

    # ---- teacher ------------------------------------------------------------

    def momentum(self):
        """Teacher momentum for the current step."""
        return backend_step.momentum_at(
            self.step_counter, self.total_steps, self.base_momentum, self.final_momentum)

    def ema_pairs(self):
        """(student variable, teacher variable) pairs the EMA moves: every
        trainable student weight of encoder and projector (BatchNorm
        statistics are not averaged)."""
        pairs = []
        for student, teacher in ((self.encoder, self.teacher_encoder),
                                 (self.projector, self.teacher_projector)):
            for s, t in zip(student.weights, teacher.weights):
                if s.shape != t.shape or s.path.split("/", 1)[1] != t.path.split("/", 1)[1]:
                    raise RuntimeError(f"Student/teacher mismatch: {s.path} vs {t.path}.")
                if s.trainable:
                    pairs.append((s, t))
        return pairs

    # ---- training loop plumbing ---------------------------------------------

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def tracker_results(self):
        return {m.name: m.result() for m in self.metrics}

    def compile(self, optimizer="adamw", nan_policy="raise", **kwargs):
        """As `keras.Model.compile`; `jit_compile` defaults to `"auto"` (XLA on
        JAX and TensorFlow). Biases, norms, tokens and position tables are kept
        out of weight decay, as in the release.

        `nan_policy`: `"raise"` (default): `fit()` stops at the first NaN or
        Inf loss by raising `keras_conmim.models.callbacks.NonFiniteLossError`, which
        says what to try (a `NaNGuard` is added to its callbacks unless one
        is there); `"ignore"`: Keras' own behaviour, training goes on.
        """
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {', '.join(NAN_POLICIES)}, "
                             f"received {nan_policy!r}.")
        self.nan_policy = nan_policy
        kwargs.setdefault("jit_compile", "auto")
        super().compile(optimizer=optimizer, **kwargs)
        self._compile_config.config["nan_policy"] = nan_policy
        if hasattr(self.optimizer, "exclude_from_weight_decay"):
            no_decay = self.encoder.no_weight_decay_variables()
            no_decay += [v for v in self.projector.trainable_weights if len(v.shape) <= 1]
            self.optimizer.exclude_from_weight_decay(var_list=no_decay)

    def compile_from_config(self, config):
        # keras skips compile() on load when compile is overridden; ours only
        # adds defaults, so restoring from the saved compile config is safe.
        self.compile(**keras.saving.deserialize_keras_object(config))
        self.optimizer.build(self.trainable_variables)

    def train_step(self, *args):
        return backend_step.train_step(self, *args)

    def test_step(self, *args):
        return backend_step.test_step(self, *args)

    def fit(self, *args, **kwargs):
        x = args[0] if args else kwargs.get("x")
        dtype = check_fit_data(x)
        if dtype is not None and dtype.startswith(("int", "uint")) and dtype != "uint8":
            # named by the array's own dtype: JAX would turn int64 into int32 first
            check_images(x, self.encoder.image_shape, dtype=dtype)
        callbacks = list(kwargs.get("callbacks") or [])
        if float(ops.convert_to_numpy(self.total_steps)) == 0:
            callbacks.append(_SetTotalSteps(self, kwargs.get("initial_epoch", 0)))
        if getattr(self, "nan_policy", "raise") == "raise" and not any(
                isinstance(c, NaNGuard) for c in callbacks):
            callbacks.insert(0, NaNGuard())
        kwargs["callbacks"] = callbacks
        return super().fit(*args, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            projector=keras.saving.serialize_keras_object(self.projector),
            mask_generator=keras.saving.serialize_keras_object(self.mask_generator),
            views=keras.saving.serialize_keras_object(self.views),
            temperature=self.temperature,
            base_momentum=self.base_momentum,
            final_momentum=self.final_momentum,
            total_steps=self._total_steps_arg,
            seed=self.seed,
            objective=self.objective,
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config_with_layers(config, ("encoder", "projector", "mask_generator", "views")))


class _SetTotalSteps(keras.callbacks.Callback):
    """Sets the momentum schedule's length from fit()'s epochs and steps."""

    def __init__(self, conmim, initial_epoch):
        super().__init__()
        self.conmim = conmim
        self.initial_epoch = initial_epoch

    def on_train_begin(self, logs=None):
        steps, epochs = self.params.get("steps"), self.params.get("epochs")
        if not steps:
            raise ValueError(
                "ConMIM cannot size its momentum schedule: the dataset has no "
                "known length. Pass steps_per_epoch to fit() or total_steps to "
                "ConMIM(...)."
            )
        done = int(ops.convert_to_numpy(self.conmim.step_counter))
        self.conmim.total_steps.assign(float(done + steps * (epochs - self.initial_epoch)))
