"""Building blocks of the BEiT-style ViT used by ConMIM.

Everything here is written with `keras.ops` / `keras.random` only, so the same
layers run (and compile) on JAX, TensorFlow and PyTorch.
"""

import math

import keras
import numpy as np
from keras import ops

PACKAGE = "keras_conmim"


def config_with_layers(config, keys):
    """A copy of `config` with the serialized sub-layers under `keys` rebuilt
    (for `from_config` of models that wrap other Keras objects)."""
    config = dict(config)
    for key in keys:
        config[key] = keras.saving.deserialize_keras_object(config[key])
    return config


def gelu(x):
    """Exact (erf) GELU, as in the release.

    On TensorFlow it is written as `0.5 x (1 + erf(x / sqrt 2))`, the formula
    PyTorch's kernel computes: `tf.nn.gelu` computes the same function through
    `Erfc`, an op ONNX does not have, so a model using it could not be
    exported to ONNX. The two agree to float32 rounding (~5e-7).

    JAX keeps `jax.nn.gelu` (its `erfc` form) although XLA:CPU ran the `erf`
    form forward 2.6x faster (about 1.1 against 2.9 ms on a 6400 x 512 array,
    2-core AMD EPYC): JAX lowers `erf` to a StableHLO composite that
    TensorFlow cannot load, and the SavedModel export of a JAX-trained model
    goes through TensorFlow. Torch keeps its fused kernel.
    """
    if keras.backend.backend() == "tensorflow":
        return 0.5 * x * (1.0 + ops.erf(x * (1.0 / math.sqrt(2.0))))
    return ops.gelu(x, approximate=False)


@keras.saving.register_keras_serializable(package=PACKAGE)
class BoundedTruncatedNormal(keras.initializers.TruncatedNormal):
    """Normal(`mean`, `stddev`) truncated to `mean +- bound * stddev`.

    The release initialises with timm's `trunc_normal_(t, std=s, a=-s, b=s)`:
    a cut at ONE standard deviation (values in `[-s, s]`, effective std
    ~0.54 s), where Keras' `TruncatedNormal` cuts at two (~0.88 s). Sampled
    by the inverse CDF, as timm does: `u ~ U(Phi(-b), Phi(b))`,
    `x = mean + stddev * Phi^-1(u)`.

    Args:
        mean: float. Defaults to `0.0`.
        stddev: float. Standard deviation of the untruncated normal.
            Defaults to `0.02`.
        bound: float. Truncation point in units of `stddev`. Defaults to `1.0`
            (the release).
        seed: int, `keras.random.SeedGenerator` or None.
    """

    def __init__(self, mean=0.0, stddev=0.02, bound=1.0, seed=None):
        super().__init__(mean=mean, stddev=stddev, seed=seed)
        if not bound > 0:
            raise ValueError(f"bound must be > 0 (in standard deviations), received {bound}.")
        self.bound = float(bound)

    def __call__(self, shape, dtype=None):
        half = 0.5 * math.erf(self.bound / math.sqrt(2.0))  # Phi(b) - 1/2
        u = keras.random.uniform(shape, minval=-2.0 * half, maxval=2.0 * half,
                                 seed=self.seed, dtype="float32")  # 2u - 1
        x = ops.erfinv(u) * math.sqrt(2.0)
        x = ops.clip(x, -self.bound, self.bound) * self.stddev + self.mean
        return ops.cast(x, dtype or keras.config.floatx())

    def get_config(self):
        return {**super().get_config(), "bound": self.bound}


def trunc_normal(stddev=0.02):
    """The release's init, `trunc_normal_(std=stddev, a=-stddev, b=stddev)`:
    truncated at one standard deviation (see `BoundedTruncatedNormal`)."""
    return BoundedTruncatedNormal(stddev=stddev, bound=1.0)


def relative_position_index(grid_size):
    """BEiT's relative position index for an `(h, w)` patch grid, CLS first.

    Returns an int32 numpy array `[N + 1, N + 1]` indexing a table of
    `(2h - 1) * (2w - 1) + 3` rows; the last three rows are cls->token,
    token->cls and cls->cls.
    """
    h, w = grid_size
    coords = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"))
    coords = coords.reshape(2, -1)  # [2, N], row-major
    rel = coords[:, :, None] - coords[:, None, :]  # a - b
    index = (rel[0] + h - 1) * (2 * w - 1) + (rel[1] + w - 1)
    num_rows = (2 * h - 1) * (2 * w - 1) + 3
    n = h * w
    full = np.zeros((n + 1, n + 1), dtype="int32")
    full[1:, 1:] = index
    full[0, :] = num_rows - 3
    full[:, 0] = num_rows - 2
    full[0, 0] = num_rows - 1
    return full


def sincos_position_embedding(grid_size, hidden_dim):
    """Fixed 2D sin-cos table (MAE), `[h * w, hidden_dim]`, float32."""
    if hidden_dim % 4:
        raise ValueError(
            "position_embedding='sincos' needs hidden_dim divisible by 4, "
            f"received hidden_dim={hidden_dim}."
        )
    h, w = grid_size
    gy, gx = np.meshgrid(np.arange(h, dtype="float64"),
                         np.arange(w, dtype="float64"), indexing="ij")
    quarter = hidden_dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype="float64") / quarter)

    def encode(pos):
        out = pos.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([encode(gy), encode(gx)], axis=1).astype("float32")


class SeedStateMixin:
    """Saves this layer's random-stream positions in `.keras` files.

    Keras saves a layer's weights but not its `SeedGenerator` states, so a
    reloaded model would replay the masks, views and drop-path patterns it
    drew since step 0. Checkpoints must resume the streams where they were.
    """

    def _own_seed_generators(self):
        return [g for g in getattr(self, "_seed_generators", [])]

    def save_own_variables(self, store):
        super().save_own_variables(store)
        for i, generator in enumerate(self._own_seed_generators()):
            store[f"seed_state_{i}"] = keras.ops.convert_to_numpy(generator.state)

    def load_own_variables(self, store):
        seeds = {k: store[k] for k in store.keys() if k.startswith("seed_state_")}
        rest = {k: store[k] for k in store.keys() if not k.startswith("seed_state_")}
        super().load_own_variables(rest)
        for i, generator in enumerate(self._own_seed_generators()):
            if f"seed_state_{i}" in seeds:
                generator.state.assign(np.asarray(seeds[f"seed_state_{i}"]))


@keras.saving.register_keras_serializable(package=PACKAGE)
class PatchEmbedding(keras.layers.Layer):
    """Conv patch embedding (kernel = stride = patch size) to `[B, N, D]`.

    Args:
        hidden_dim: int. Width of the patch embeddings.
        patch_size: int. Side of a square patch in pixels.
    """

    def __init__(self, hidden_dim, patch_size, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.patch_size = patch_size

    def build(self, input_shape):
        # The release's `_init_weights` covers the patch Conv2d too: the same
        # truncated normal as every Linear, bias 0.
        self.conv = keras.layers.Conv2D(
            self.hidden_dim,
            self.patch_size,
            strides=self.patch_size,
            padding="valid",
            kernel_initializer=trunc_normal(),
            bias_initializer="zeros",
            dtype=self.dtype_policy,
            name="proj",
        )
        self.conv.build(input_shape)

    def call(self, images):
        x = self.conv(images)
        return ops.reshape(x, (-1, x.shape[1] * x.shape[2], self.hidden_dim))

    def get_config(self):
        config = super().get_config()
        config.update(hidden_dim=self.hidden_dim, patch_size=self.patch_size)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class RelativePositionBias(keras.layers.Layer):
    """BEiT relative position bias: a table gathered to `[heads, N+1, N+1]`.

    Zero-initialised, as in the release. One instance is shared by all blocks
    in pre-training; fine-tuning uses one per block.

    Args:
        grid_size: tuple of 2 ints. Patch grid `(h, w)`.
        num_heads: int. Number of attention heads.
    """

    def __init__(self, grid_size, num_heads, **kwargs):
        super().__init__(**kwargs)
        self.grid_size = tuple(grid_size)
        self.num_heads = num_heads
        self._index = relative_position_index(self.grid_size)

    def build(self, input_shape=None):
        h, w = self.grid_size
        self.relative_position_bias_table = self.add_weight(
            shape=((2 * h - 1) * (2 * w - 1) + 3, self.num_heads),
            initializer="zeros",
            name="relative_position_bias_table",
        )

    def call(self, inputs=None):
        n = self._index.shape[0]
        bias = ops.take(
            self.relative_position_bias_table,
            ops.convert_to_tensor(self._index.reshape(-1)),
            axis=0,
        )
        bias = ops.reshape(bias, (n, n, self.num_heads))
        return ops.transpose(bias, (2, 0, 1))

    def get_config(self):
        config = super().get_config()
        config.update(grid_size=self.grid_size, num_heads=self.num_heads)
        return config


def _fused_attention_runs(dtype):
    """False where `keras.ops.dot_product_attention` cannot run: float16 on
    JAX's CPU backend (XLA:CPU has no float16 dot with float32 accumulation);
    the manual path serves there."""
    if keras.backend.backend() != "jax" or keras.backend.standardize_dtype(dtype) != "float16":
        return True
    import jax

    return jax.default_backend() != "cpu"


@keras.saving.register_keras_serializable(package=PACKAGE)
class Attention(keras.layers.Layer):
    """Multi-head self-attention with q/v biases (no k bias) and an optional
    additive bias on the logits.

    Args:
        hidden_dim: int. Width of the tokens.
        num_heads: int. Number of heads; must divide `hidden_dim`.
        output_init_scale: float. The output projection's init std is
            `0.02 * output_init_scale` (the release divides block l's by
            `sqrt(2 l)`). Defaults to `1.0`.
        fused: bool. `True`: `keras.ops.dot_product_attention` (cuDNN flash
            attention on JAX GPUs, PyTorch's SDPA kernels on torch, XLA's
            fused einsums elsewhere), the bias passed as its `bias`, logits
            and softmax in float32 under mixed precision. `False`: the
            release's explicit matmul / softmax / matmul, the reference the
            tests compare the fused path with. Defaults to `True`.
    """

    def __init__(self, hidden_dim, num_heads, output_init_scale=1.0, fused=True, **kwargs):
        super().__init__(**kwargs)
        if hidden_dim % num_heads:
            raise ValueError(
                f"num_heads={num_heads} must divide hidden_dim={hidden_dim}."
            )
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.output_init_scale = output_init_scale
        self.fused = bool(fused)
        self.head_dim = hidden_dim // num_heads

    def build(self, input_shape):
        d = self.hidden_dim
        self.qkv_kernel = self.add_weight(
            shape=(d, 3 * d), initializer=trunc_normal(), name="qkv_kernel"
        )
        self.q_bias = self.add_weight(
            shape=(d,), initializer="zeros", name="q_bias"
        )
        self.v_bias = self.add_weight(
            shape=(d,), initializer="zeros", name="v_bias"
        )
        self.proj_kernel = self.add_weight(
            shape=(d, d),
            initializer=trunc_normal(0.02 * self.output_init_scale),
            name="proj_kernel",
        )
        self.proj_bias = self.add_weight(
            shape=(d,), initializer="zeros", name="proj_bias"
        )

    def call(self, x, bias=None):
        num_tokens = x.shape[1]
        q_bias = ops.cast(self.q_bias, x.dtype)
        qkv_bias = ops.concatenate(
            [q_bias, ops.zeros_like(q_bias), ops.cast(self.v_bias, x.dtype)]
        )
        qkv = ops.matmul(x, self.qkv_kernel) + qkv_bias
        qkv = ops.reshape(
            qkv, (-1, num_tokens, 3, self.num_heads, self.head_dim)
        )
        if self.fused and _fused_attention_runs(x.dtype):
            out = ops.dot_product_attention(  # [B, T, heads, hd] in and out
                qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2],
                bias=None if bias is None else ops.cast(bias, x.dtype)[None],
                scale=self.head_dim**-0.5)
        else:
            out = self._manual_attention(qkv, bias)
        out = ops.reshape(out, (-1, num_tokens, self.hidden_dim))
        return ops.matmul(out, self.proj_kernel) + self.proj_bias

    def _manual_attention(self, qkv, bias):
        """The release's matmul / float32 softmax / matmul on `qkv`
        `[B, T, 3, heads, hd]`; returns `[B, T, heads, hd]`."""
        qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))  # [3, B, heads, T, hd]
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * ops.cast(self.head_dim**-0.5, q.dtype)
        logits = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))
        if bias is not None:
            logits = logits + ops.cast(bias, logits.dtype)[None]
        # Softmax in float32: under mixed precision the logits can overflow.
        weights = ops.cast(ops.softmax(ops.cast(logits, "float32")), v.dtype)
        return ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3))

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_dim=self.hidden_dim,
            num_heads=self.num_heads,
            output_init_scale=self.output_init_scale,
            fused=self.fused,
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class TransformerBlock(SeedStateMixin, keras.layers.Layer):
    """Pre-norm ViT block with LayerScale and stochastic depth.

    Args:
        hidden_dim: int. Token width.
        num_heads: int. Attention heads.
        mlp_dim: int. Hidden width of the MLP.
        drop_path_rate: float. Probability of dropping the residual branch
            per sample in training. Defaults to `0.0`.
        layer_scale_init_value: float or None. Initial LayerScale value;
            `None` turns LayerScale off. Defaults to `0.1`.
        layer_norm_epsilon: float. Defaults to `1e-6`.
        output_init_scale: float. Init scale of the two output projections.
        use_relative_position_bias: bool. Give this block its own relative
            position bias table (fine-tuning layout). Defaults to `False`.
        grid_size: tuple. Patch grid, needed with `use_relative_position_bias`.
        fused_attention: bool. `Attention(fused=...)`. Defaults to `True`.
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        mlp_dim,
        drop_path_rate=0.0,
        layer_scale_init_value=0.1,
        layer_norm_epsilon=1e-6,
        output_init_scale=1.0,
        use_relative_position_bias=False,
        grid_size=None,
        fused_attention=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.fused_attention = bool(fused_attention)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.drop_path_rate = drop_path_rate
        self.layer_scale_init_value = layer_scale_init_value
        self.layer_norm_epsilon = layer_norm_epsilon
        self.output_init_scale = output_init_scale
        self.use_relative_position_bias = use_relative_position_bias
        self.grid_size = tuple(grid_size) if grid_size is not None else None
        if self.drop_path_rate > 0:
            self.seed_generator = keras.random.SeedGenerator(name="drop_path")

    def build(self, input_shape):
        p = self.dtype_policy
        self.norm1 = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=p, name="norm1"
        )
        self.attn = Attention(
            self.hidden_dim,
            self.num_heads,
            output_init_scale=self.output_init_scale,
            fused=self.fused_attention,
            dtype=p,
            name="attn",
        )
        self.norm2 = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=p, name="norm2"
        )
        self.fc1 = keras.layers.Dense(
            self.mlp_dim, kernel_initializer=trunc_normal(), dtype=p, name="fc1"
        )
        self.fc2 = keras.layers.Dense(
            self.hidden_dim,
            kernel_initializer=trunc_normal(0.02 * self.output_init_scale),
            dtype=p,
            name="fc2",
        )
        for layer in (self.norm1, self.attn, self.norm2):
            layer.build(input_shape)
        self.fc1.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (self.mlp_dim,))
        if self.use_relative_position_bias:
            self.relative_position_bias = RelativePositionBias(
                self.grid_size, self.num_heads, dtype=p, name="relative_position_bias"
            )
            self.relative_position_bias.build()
        if self.layer_scale_init_value is not None:
            init = keras.initializers.Constant(self.layer_scale_init_value)
            self.gamma_1 = self.add_weight(
                shape=(self.hidden_dim,), initializer=init, name="gamma_1"
            )
            self.gamma_2 = self.add_weight(
                shape=(self.hidden_dim,), initializer=init, name="gamma_2"
            )

    def _drop_path(self, x, training):
        if not training or self.drop_path_rate == 0:
            return x
        keep = 1.0 - self.drop_path_rate
        noise = keras.random.uniform(
            (ops.shape(x)[0], 1, 1), seed=self.seed_generator, dtype=x.dtype
        )
        return x * ops.floor(keep + noise) / keep

    def call(self, x, bias=None, training=None):
        if self.use_relative_position_bias:
            bias = self.relative_position_bias()
        branch = self.attn(self.norm1(x), bias=bias)
        if self.layer_scale_init_value is not None:
            branch = branch * self.gamma_1
        x = x + self._drop_path(branch, training)
        branch = self.fc2(gelu(self.fc1(self.norm2(x))))
        if self.layer_scale_init_value is not None:
            branch = branch * self.gamma_2
        return x + self._drop_path(branch, training)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_dim=self.hidden_dim,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            drop_path_rate=self.drop_path_rate,
            layer_scale_init_value=self.layer_scale_init_value,
            layer_norm_epsilon=self.layer_norm_epsilon,
            output_init_scale=self.output_init_scale,
            use_relative_position_bias=self.use_relative_position_bias,
            grid_size=self.grid_size,
            fused_attention=self.fused_attention,
        )
        return config
