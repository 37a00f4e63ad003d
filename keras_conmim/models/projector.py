"""The release's projection head: per-token BN MLP."""

import keras
from keras import ops

from keras_conmim.models.distribute import cross_replica_mean
from keras_conmim.models.layers import PACKAGE, trunc_normal


@keras.saving.register_keras_serializable(package=PACKAGE)
class TokenBatchNorm(keras.layers.Layer):
    """BatchNorm over every axis but the last, with batch statistics whenever
    `training=True` -- also when the layer is frozen. Under data parallelism
    the statistics are the global batch's (SyncBN; see
    `keras_conmim.models.distribute`).

    Keras' `BatchNormalization` switches to moving statistics once its layer
    is non-trainable; the EMA teacher is non-trainable yet must normalise with
    batch statistics, as the release's teacher head does (train mode).

    Args:
        epsilon: float. Defaults to `1e-5` (PyTorch's).
        momentum: float. Moving-average momentum, Keras convention
            (PyTorch's 0.1 is 0.9 here). Defaults to `0.9`.
        center, scale: bool. Learn an offset / a scale. Default `True`.
    """

    def __init__(self, epsilon=1e-5, momentum=0.9, center=True, scale=True, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.momentum = momentum
        self.center = center
        self.scale = scale

    def build(self, input_shape):
        dim = (input_shape[-1],)
        if self.scale:
            self.gamma = self.add_weight(shape=dim, initializer="ones", name="gamma")
        if self.center:
            self.beta = self.add_weight(shape=dim, initializer="zeros", name="beta")
        self.moving_mean = self.add_weight(
            shape=dim, initializer="zeros", trainable=False, name="moving_mean")
        self.moving_variance = self.add_weight(
            shape=dim, initializer="ones", trainable=False, name="moving_variance")

    def call(self, x, training=None):
        x32 = ops.cast(x, "float32")
        if training:
            # Statistics of the global batch: under tf.distribute each
            # replica's are averaged (SyncBN, keras_conmim.models.distribute); JAX
            # computes them over the global array anyway.
            axes = tuple(range(len(x.shape) - 1))
            mean = cross_replica_mean(ops.mean(x32, axis=axes))
            centered = x32 - mean
            variance = cross_replica_mean(ops.mean(ops.square(centered), axis=axes))
            m = self.momentum
            # PyTorch tracks the unbiased variance; the difference is tiny at
            # B * tokens samples, and Keras' own BN tracks the biased one.
            old_mean = ops.cast(self.moving_mean, "float32")
            old_var = ops.cast(self.moving_variance, "float32")
            self.moving_mean.assign(m * old_mean + (1 - m) * mean)
            self.moving_variance.assign(m * old_var + (1 - m) * variance)
        else:
            mean = ops.cast(self.moving_mean, "float32")
            variance = ops.cast(self.moving_variance, "float32")
            centered = x32 - mean
        # The scale folded into one per-channel factor: two passes over the
        # tokens (multiply, add) instead of three. Variables are autocast to
        # the compute dtype in call; stay in float32.
        factor = ops.rsqrt(variance + self.epsilon)
        if self.scale:
            factor = factor * ops.cast(self.gamma, "float32")
        y = centered * factor
        if self.center:
            y = y + ops.cast(self.beta, "float32")
        return ops.cast(y, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon, momentum=self.momentum,
                      center=self.center, scale=self.scale)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class ProjectionHead(keras.layers.Layer):
    """Linear(no bias) - BN - ReLU, repeated, then Linear(no bias) - BN(no
    scale, no offset), applied to every token.

    BatchNorm statistics are taken over all tokens of the batch (CLS
    included), as in the release. At small scale the hidden width dominates
    the step's cost, so it is a parameter.

    Args:
        hidden_dim: int. Hidden width. Defaults to `4096` (the release).
        output_dim: int. Output width. Defaults to `256`.
        num_layers: int. Number of Linear layers, >= 1. Defaults to `3`.
        batch_norm_epsilon: float. Defaults to `1e-5` (PyTorch's).
        batch_norm_momentum: float. Keras convention (PyTorch's 0.1 is
            Keras' 0.9). Defaults to `0.9`.
    """

    def __init__(self, hidden_dim=4096, output_dim=256, num_layers=3,
                 batch_norm_epsilon=1e-5, batch_norm_momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        if num_layers < 1 or hidden_dim < 1 or output_dim < 1:
            raise ValueError(
                "ProjectionHead needs num_layers, hidden_dim and output_dim >= 1, "
                f"received {num_layers}, {hidden_dim}, {output_dim}."
            )
        self.hidden_dim = hidden_dim
        self.output_dim = output_dim
        self.num_layers = num_layers
        self.batch_norm_epsilon = batch_norm_epsilon
        self.batch_norm_momentum = batch_norm_momentum
        self.dense_layers, self.norms = [], []
        for i in range(num_layers):
            last = i == num_layers - 1
            self.dense_layers.append(keras.layers.Dense(
                output_dim if last else hidden_dim, use_bias=False,
                kernel_initializer=trunc_normal(), dtype=self.dtype_policy,
                name=f"dense_{i}"))
            self.norms.append(TokenBatchNorm(
                epsilon=batch_norm_epsilon, momentum=batch_norm_momentum,
                center=not last, scale=not last, dtype=self.dtype_policy,
                name=f"batch_norm_{i}"))

    def build(self, input_shape):
        shape = tuple(input_shape)
        for dense, norm in zip(self.dense_layers, self.norms):
            dense.build(shape)
            shape = shape[:-1] + (dense.units,)
            norm.build(shape)
        self.built = True

    def call(self, tokens, training=None):
        x = tokens
        for i, (dense, norm) in enumerate(zip(self.dense_layers, self.norms)):
            x = norm(dense(x), training=training)
            if i < self.num_layers - 1:
                x = ops.relu(x)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_dim=self.hidden_dim, output_dim=self.output_dim,
            num_layers=self.num_layers, batch_norm_epsilon=self.batch_norm_epsilon,
            batch_norm_momentum=self.batch_norm_momentum,
        )
        return config
