"""The ConMIM step under `torch.compile` (Keras' torch trainer with
`jit_compile=True`) equals the eager step: the same loss at every step and
the same weights after a few optimizer steps, views, masks and EMA included.

Torch only, and on a tiny model: Inductor takes minutes to compile a real
one on a 2-core CPU. `fallback_random` makes Inductor draw random numbers
with torch's own generator, as eager does, so the views and masks match."""

import keras
import numpy as np
import pytest

from conftest import to_numpy

pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch",
                                reason="torch.compile is the torch backend's compiler")


def _run(jit_compile, images):
    import keras_conmim as kc

    keras.utils.set_random_seed(0)
    encoder = kc.ViT(image_shape=(8, 8, 1), patch_size=4, num_layers=1, num_heads=2,
                     hidden_dim=16, mlp_dim=32)
    model = kc.ConMIM(encoder, projector=kc.ProjectionHead(16, 8), seed=0, total_steps=6,
                      base_momentum=0.9, mask_generator="random")
    model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=jit_compile)
    history = model.fit(images, batch_size=4, epochs=1, shuffle=False, verbose=0)
    return history.history["loss"], [(v.path, to_numpy(v)) for v in model.variables]


def test_compiled_step_equals_eager_step():
    import torch._dynamo
    import torch._inductor.config as inductor

    images = np.random.default_rng(0).integers(0, 256, (12, 8, 8, 1)).astype("uint8")  # 3 steps
    eager_loss, eager = _run(False, images)
    torch._dynamo.reset()
    before, inductor.fallback_random = inductor.fallback_random, True
    try:
        compiled_loss, compiled = _run(True, images)
    finally:
        inductor.fallback_random = before
    # 2e-6 measured on an AMD EPYC; 1.3e-5 on an Intel Xeon with AMX (oneDNN picks other kernels)
    np.testing.assert_allclose(compiled_loss, eager_loss, rtol=5e-5)
    assert len(compiled) == len(eager)  # the same variables in the same order (names differ:
    for (_, other), (path, value) in zip(compiled, eager):  # a second model gets _1 suffixes)
        # Fused kernels sum in another order: within 1e-4 of each variable's scale
        # (measured: 3e-5 on the tokens after 3 SGD steps at lr 0.1); BatchNorm's
        # moving variance, a mean of squares, within 5e-4 (1.1e-4 measured).
        scale = max(1.0, float(np.abs(value).max())) * (5 if "moving_" in path else 1)
        assert np.abs(other.astype("float64") - value).max() <= 1e-4 * scale, path
