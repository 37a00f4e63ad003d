"""Runs a few ConMIM steps on N devices (or one) and saves every variable:
the helper of tests/test_distribute.py, run in a subprocess because the
device count is fixed before JAX / TensorFlow start.

    KERAS_BACKEND=jax python tests/distributed_run.py --devices 4 --mode data_parallel \
        --steps 5 --out state.npz [--save-at 3 --checkpoint c.keras] [--resume c.keras]
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

GLOBAL_BATCH = 8


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--mode", default="none")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", required=True)
    p.add_argument("--save-at", type=int, default=None)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--resume", default=None)
    args = p.parse_args()
    backend = os.environ.get("KERAS_BACKEND", "jax")
    if backend == "jax":
        os.environ["XLA_FLAGS"] = " ".join([  # after the suite's own flags (conftest.py)
            os.environ.get("XLA_FLAGS", ""),
            f"--xla_force_host_platform_device_count={args.devices}"]).strip()
    elif backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.devices)
    import keras
    import numpy as np

    import keras_conmim as kc
    from keras_conmim.models import distribute
    from keras_conmim.atomic import save_atomic

    keras.utils.set_random_seed(0)
    plan = distribute.data_parallel(args.mode)
    per_device = plan.check_batch(GLOBAL_BATCH)
    images = np.random.RandomState(0).randint(0, 256, (GLOBAL_BATCH * 6, 16, 16, 1)).astype("uint8")
    source = kc.data.from_arrays(images)
    with plan.scope():
        if args.resume:
            model = keras.saving.load_model(args.resume)
        else:
            encoder = kc.ViT(image_shape=(16, 16, 1), patch_size=4, num_layers=2, num_heads=2,
                             hidden_dim=16, mlp_dim=32)
            model = kc.ConMIM(encoder, projector=kc.ProjectionHead(32, 16), seed=0,
                              base_momentum=0.9, total_steps=args.steps)
            # A large epsilon: Adam's first steps turn reduction-order noise
            # in near-zero gradients into +-lr updates (sign(g)); this keeps
            # the comparison about the parallelism, not that amplification.
            model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.05, epsilon=1e-3))
    done = 0 if not args.resume else int(keras.ops.convert_to_numpy(model.step_counter))

    def fit(steps, start):
        data = source.dataset(plan.per_host_batch(GLOBAL_BATCH), seed=0, start_step=start,
                              **plan.shard())
        model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)

    if args.save_at is not None:
        fit(args.save_at - done, done)
        if plan.is_chief:  # alone, as the recipes do (also across hosts)
            save_atomic(model, args.checkpoint)
        done = args.save_at
    fit(args.steps - done, done)
    state = {f"v{i}_{v.path}": keras.ops.convert_to_numpy(v.value)
             for i, v in enumerate(model.variables)}
    state.update({f"opt{i}_{v.path}": keras.ops.convert_to_numpy(v.value)
                  for i, v in enumerate(model.optimizer.variables)})
    np.savez(args.out, **state)
    print(f"plan {plan.kind} replicas={plan.replicas} per_device={per_device} "
          f"step={int(keras.ops.convert_to_numpy(model.step_counter))}")


if __name__ == "__main__":
    main()
