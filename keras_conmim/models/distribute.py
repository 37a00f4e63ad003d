"""Data-parallel pre-training with the engines Keras users already run:
`keras.distribution.DataParallel` on JAX (one host or many, GPU and TPU) and
`tf.distribute` on TensorFlow. No communication code of our own.

    from keras_conmim.models import distribute
    plan = distribute.data_parallel()          # all local devices (+ hosts)
    with plan.scope():
        model = keras_conmim.ConMIM.from_preset("vit_mini_p4_28")
        model.compile(...)
    model.fit(source.dataset(plan.per_host_batch(256), **plan.shard()), ...)
    if plan.is_chief:
        keras_conmim.atomic.save_atomic(model, "ckpt.keras")  # alone: this_host_only()

What is the same as one device with the same global batch and seed:
- **Views and masks.** Every random draw is made for the global batch and
  each replica keeps its rows (`global_batch_uniform`): on JAX the compiled
  step sees the global array anyway; under `tf.distribute` each replica draws
  the global batch's numbers and slices its own.
- **The loss** is the global batch's mean: TensorFlow sums gradients across
  replicas, so each replica's loss is divided by the replica count
  (`loss_scale`).
- **The projector's BatchNorm** takes statistics over the global batch
  (SyncBN; `cross_replica_mean`). The release runs DDP without SyncBN, i.e.
  per-device statistics; we choose the global batch so that a run does not
  depend on how many devices it is split over (and a checkpoint continues
  exactly on another count). With the release's 64 images per device the
  per-device statistics are already taken over 64 x 196 tokens; the
  difference is the noise of those estimates.
- **EMA teacher and step counter** are updated after the optimizer, from the
  all-reduced student: every replica computes the same value, so each
  replica's copy stays equal (TF; tested) and JAX keeps them replicated.

torch: Keras 3's torch trainer has no multi-device `fit` and no
`keras.distribution`; `data_parallel()` refuses there and says what to use.
"""

import contextlib
import os

import keras

BACKEND = keras.backend.backend()
MODES = ("auto", "none", "data_parallel")
MULTI_HOST_ENV = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES")


# ---- inside the step: replica count, id, and the cross-replica helpers --------


def _tf_replica_context():
    import tensorflow as tf

    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return None
    return ctx


def num_replicas():
    """Replicas that each run the step on part of the batch: >1 only inside a
    `tf.distribute` replica context (JAX compiles one global program)."""
    if BACKEND == "tensorflow":
        ctx = _tf_replica_context()
        return 1 if ctx is None else ctx.num_replicas_in_sync
    return 1


def loss_scale():
    """Factor for a replica's mean loss so that the summed gradients are the
    global batch's mean gradient."""
    return 1.0 / num_replicas()


def cross_replica_mean(x):
    """Mean of `x` over replicas (identity outside `tf.distribute`)."""
    if BACKEND == "tensorflow":
        ctx = _tf_replica_context()
        if ctx is not None:
            import tensorflow as tf

            return ctx.all_reduce(tf.distribute.ReduceOp.MEAN, x)
    return x


def global_batch_uniform(shape, seed, batch_axis=0):
    """`keras.random.uniform(shape, seed=seed)` where `shape[batch_axis]` is
    this replica's share of the batch: the numbers are drawn for the global
    batch (every replica draws the same) and this replica's rows are kept, so
    views and masks do not depend on the replica count."""
    n = num_replicas()
    if n == 1:
        return keras.random.uniform(shape, seed=seed)
    import tensorflow as tf

    shape = list(shape)
    local = shape[batch_axis]
    shape[batch_axis] = local * n
    values = keras.random.uniform(tuple(shape), seed=seed)
    index = tf.distribute.get_replica_context().replica_id_in_sync_group
    start = [0] * len(shape)
    start[batch_axis] = index * local
    size = list(shape)
    size[batch_axis] = local
    return tf.slice(values, start, size)


# ---- outside the step: the plan ---------------------------------------------------


@contextlib.contextmanager
def this_host_only():
    """A block one host runs alone (the chief writing a checkpoint, drawing a
    view grid). Keras creates throwaway variables there (`model.save` builds
    a fresh optimizer to list what to skip; the view grid copies layers), and
    under a multi-process `keras.distribution` every variable creation is a
    collective the other hosts never join: JAX fails with "passed to
    device_put is not the same on each process". Inside this block no Keras
    distribution is active, so such variables stay on this host; reading the
    model's replicated variables needs no other host. No-op elsewhere."""
    if keras.backend.backend() != "jax" or keras.distribution.distribution() is None:
        yield
        return
    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)


class Plan:
    """How a run is spread: `kind` ("none", "jax_data_parallel",
    "tf_mirrored", "tf_multi_worker", "tf_tpu"), the number of replicas, the
    host's index and the host count. `scope()` is where the model is built
    and compiled; `shard()` the arguments for `ImageSource.dataset`."""

    def __init__(self, kind="none", replicas=1, host=0, hosts=1, strategy=None):
        self.kind, self.replicas, self.host, self.hosts = kind, replicas, host, hosts
        self.strategy = strategy

    @property
    def is_chief(self):
        """True on the one host that writes files (checkpoints, logs, pictures)."""
        return self.host == 0

    def check_batch(self, global_batch):
        """Raises `ValueError` naming the numbers when the global batch does
        not split evenly over the replicas (and hosts)."""
        if global_batch % self.replicas:
            raise ValueError(
                f"Global batch {global_batch} does not split over {self.replicas} devices "
                f"({global_batch / self.replicas:g} each). Use a multiple of {self.replicas}, "
                f"e.g. --batch-size {max(1, global_batch // self.replicas) * self.replicas}.")
        return global_batch // self.replicas

    def per_host_batch(self, global_batch):
        self.check_batch(global_batch)
        return global_batch // self.hosts

    def shard(self):
        """`ImageSource.dataset(..., **plan.shard())`: this host's rows of each
        global batch."""
        # One input shard (tf.distribute splits the batch itself): every
        # worker reads the whole global batch, whatever its task id.
        return {"num_shards": self.hosts, "shard_index": self.host if self.hosts > 1 else 0}

    def scope(self):
        if self.strategy is not None:
            return self.strategy.scope()
        return contextlib.nullcontext()

    def describe(self, global_batch):
        if self.kind == "none":
            return f"one device, batch {global_batch}"
        return (f"{self.kind}: {self.replicas} devices on {self.hosts} host(s), global batch "
                f"{global_batch} = {global_batch // self.replicas} per device")


def _jax_devices():
    import jax

    return jax.devices(), jax.process_index(), jax.process_count()


def _single_device(mode, engine, count, kind, fix):
    """`auto` on one device: no distribution; `data_parallel`: the error."""
    if mode == "auto":
        return Plan()
    raise ValueError(f"--distribute data_parallel asks for several devices but {engine} sees "
                     f"{count} ({kind}). Use --distribute none, or {fix}.")


def data_parallel(mode="data_parallel", devices=None, strategy=None):
    """A `Plan` for `mode`:

    - `"none"`: one device.
    - `"data_parallel"`: every device. JAX: `keras.distribution.DataParallel`
      set as the global distribution (call before building the model);
      multi-host when `KERAS_DISTRIBUTION_*` say so (`keras.distribution.
      initialize()`). TensorFlow: `tf.distribute.MirroredStrategy` over the
      local GPUs (or `strategy`: a `MultiWorkerMirroredStrategy` /
      `TPUStrategy` you built). Fails on torch, and where only one device
      is visible.
    - `"auto"`: `"data_parallel"` when more than one device is visible (JAX)
      or a strategy is given (TensorFlow), else `"none"`.
    """
    if mode not in MODES:
        raise ValueError(f"distribute mode must be one of {MODES}, received {mode!r}.")
    if mode == "none":
        return Plan()
    if BACKEND == "torch":
        if mode == "auto":
            return Plan()
        raise ValueError(
            "Data parallelism is not available on the torch backend: Keras 3's torch trainer "
            "has no multi-device fit() and no keras.distribution. Use KERAS_BACKEND=jax "
            "(keras.distribution.DataParallel, one host or many) or tensorflow "
            "(tf.distribute), or --distribute none for one device.")
    if BACKEND == "jax":
        if any(os.environ.get(k) for k in MULTI_HOST_ENV):
            import jax

            if not jax.distributed.is_initialized():
                keras.distribution.initialize()
        all_devices, host, hosts = _jax_devices()
        devices = list(devices) if devices is not None else all_devices
        if len(devices) < 2:
            return _single_device(mode, "JAX", len(devices),
                                  devices[0].platform if devices else "none",
                                  "expose more devices (GPUs/TPUs; on CPU XLA_FLAGS="
                                  "--xla_force_host_platform_device_count=N before jax starts)")
        keras.distribution.set_distribution(keras.distribution.DataParallel(
            devices=[f"{d.platform}:{d.id}" for d in devices], auto_shard_dataset=False))
        return Plan("jax_data_parallel", len(devices), host, hosts)
    import tensorflow as tf  # BACKEND == "tensorflow"

    if strategy is None:
        gpus = tf.config.list_logical_devices("GPU")
        cpus = tf.config.list_logical_devices("CPU")
        local = gpus if gpus else cpus
        if len(local) < 2:
            return _single_device(mode, "TensorFlow", len(local), "GPU" if gpus else "CPU",
                                  "split the CPU with tf.config.set_logical_device_configuration "
                                  "before TF starts")
        strategy = tf.distribute.MirroredStrategy([d.name for d in local])
    kind = {"MirroredStrategy": "tf_mirrored", "MultiWorkerMirroredStrategy": "tf_multi_worker",
            "TPUStrategy": "tf_tpu"}.get(type(strategy).__name__, type(strategy).__name__)
    # tf.distribute splits each global batch over its workers itself, so every
    # worker reads the global batch (hosts=1 for the input); the worker with
    # task id 0 is the one that writes files.
    host = getattr(getattr(strategy, "cluster_resolver", None), "task_id", 0) or 0
    return Plan(kind, strategy.num_replicas_in_sync, host, 1, strategy=strategy)


__all__ = ["MODES", "Plan", "cross_replica_mean", "data_parallel", "global_batch_uniform",
           "loss_scale", "num_replicas"]
