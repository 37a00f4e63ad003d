import os

import keras
import numpy as np
import pytest

import keras_conmim as kc
from conftest import randomize_weights, tiny_vit, to_numpy, uint8_images
from numpy_reference import info_nce, projector_forward, vit_forward, weights_by_name

BACKEND = keras.backend.backend()


def tiny_conmim(**kwargs):
    kwargs.setdefault("projector", kc.ProjectionHead(32, 16))
    kwargs.setdefault("seed", 0)
    return kc.ConMIM(tiny_vit(), **kwargs)


def _weights(layer):
    return [to_numpy(v).copy() for v in layer.weights]


def test_pretext_loss_matches_numpy_reference():
    """Same weights, views and masks -> the same loss on every backend (the
    numpy reference is the common yardstick; tolerance 5e-5 each way)."""
    model = tiny_conmim()
    randomize_weights(model.encoder, seed=1)
    randomize_weights(model.projector, seed=2)
    rng = np.random.RandomState(0)
    # Teacher weights are non-trainable: give them their own random values.
    for v in model.teacher_encoder.weights + model.teacher_projector.weights:
        if "moving" not in v.path:
            v.assign((rng.standard_normal(v.shape) * 0.2).astype("float32"))
    student_view = rng.standard_normal((4, 16, 16, 1)).astype("float32")
    teacher_view = rng.standard_normal((4, 16, 16, 1)).astype("float32")
    mask = rng.rand(4, 16) < 0.6
    out = model.pretext_loss(student_view, teacher_view, mask, training=True)

    config = model.encoder.get_config()
    s = vit_forward(weights_by_name(model.encoder), config, student_view.astype("float64"), mask)
    q = projector_forward(weights_by_name(model.projector), 2 + 1, s)[:, 1:]
    t = vit_forward(weights_by_name(model.teacher_encoder), config, teacher_view.astype("float64"))
    k = projector_forward(weights_by_name(model.teacher_projector), 3, t)[:, 1:]
    loss, acc = info_nce(q, k, mask, 0.1)
    np.testing.assert_allclose(to_numpy(out["loss"]), loss, atol=5e-5)
    np.testing.assert_allclose(to_numpy(out["lookup_accuracy"]), acc, atol=1e-6)


def test_teacher_starts_as_copy_and_is_frozen():
    model = tiny_conmim()
    for s, t in zip(_weights(model.encoder), _weights(model.teacher_encoder)):
        np.testing.assert_array_equal(s, t)
    trainable = {id(v) for v in model.trainable_variables}
    teacher = model.teacher_encoder.weights + model.teacher_projector.weights
    assert not any(id(v) in trainable for v in teacher)
    assert len(model.trainable_variables) == len(model.encoder.trainable_weights) + len(
        model.projector.trainable_weights)


def test_ema_matches_numpy_after_k_steps():
    k_steps, total = 4, 10
    model = tiny_conmim(base_momentum=0.9, total_steps=total)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    images = uint8_images(8)
    pairs = model.ema_pairs()
    teacher = [to_numpy(t).copy() for _, t in pairs]
    bn_before = [to_numpy(v).copy() for v in model.teacher_projector.non_trainable_weights]
    for step in range(k_steps):
        logs = model.train_on_batch(images, return_dict=True)
        m = 1 - (1 - 0.9) * (1 + np.cos(np.pi * step / total)) / 2
        np.testing.assert_allclose(logs["momentum"], m, rtol=1e-6)
        student = [to_numpy(s) for s, _ in pairs]
        teacher = [m * t + (1 - m) * s for t, s in zip(teacher, student)]
    for expected, (_, t) in zip(teacher, pairs):
        np.testing.assert_allclose(to_numpy(t), expected, rtol=1e-5, atol=1e-6)
    assert int(to_numpy(model.step_counter)) == k_steps
    # The teacher's BN statistics come from its own batches, not the EMA.
    bn_after = [to_numpy(v) for v in model.teacher_projector.non_trainable_weights]
    assert any(np.abs(a - b).max() > 0 for a, b in zip(bn_before, bn_after))
    assert not any("moving" in t.path for _, t in pairs)


def test_teacher_gets_no_gradient():
    # With momentum fixed at 1 the teacher may only change through gradients.
    model = tiny_conmim(base_momentum=1.0, final_momentum=1.0, total_steps=5)
    model.compile(optimizer=keras.optimizers.SGD(1.0))
    before_t = [to_numpy(v).copy() for _, v in model.ema_pairs()]
    before_s = _weights(model.encoder)
    for _ in range(2):
        model.train_on_batch(uint8_images(4))
    for b, (_, v) in zip(before_t, model.ema_pairs()):
        np.testing.assert_array_equal(to_numpy(v), b)
    assert any(np.abs(a - to_numpy(b)).max() > 0 for a, b in zip(before_s, model.encoder.weights))


def test_evaluate_never_moves_the_teacher():
    model = tiny_conmim(total_steps=4)
    model.compile(optimizer="adamw")
    model.fit(uint8_images(8), batch_size=4, epochs=1, verbose=0)
    teacher = _weights(model.teacher_encoder) + _weights(model.teacher_projector)
    student = _weights(model.encoder)
    step = int(to_numpy(model.step_counter))
    logs = model.evaluate(uint8_images(8, seed=1), batch_size=4, verbose=0, return_dict=True)
    assert set(logs) >= {"loss", "lookup_accuracy"}
    after = _weights(model.teacher_encoder) + _weights(model.teacher_projector)
    for a, b in zip(teacher, after):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(student, _weights(model.encoder)):
        np.testing.assert_array_equal(a, b)
    assert int(to_numpy(model.step_counter)) == step


def test_loss_falls_on_a_fixed_batch():
    from keras_conmim.data import load_default_data

    images = load_default_data()[0][:32]
    vit = kc.ViT(image_shape=(28, 28, 1), patch_size=4, num_layers=2, num_heads=2,
                 hidden_dim=32, mlp_dim=64)
    model = kc.ConMIM(vit, projector=kc.ProjectionHead(64, 32), total_steps=50, seed=0)
    model.compile(optimizer=keras.optimizers.AdamW(2e-3))
    losses = [model.train_on_batch(images, return_dict=True)["loss"] for _ in range(50)]
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < first - 0.5, (first, last)


@pytest.mark.parametrize("mask", ["random", "block"])
def test_fit_with_steps_per_execution_and_jit(mask):
    model = tiny_conmim(mask_generator=mask)
    # Keras' torch trainer refuses steps_per_execution > 1 and compiles with
    # torch.compile rather than XLA; it runs the same step eagerly.
    torch = BACKEND == "torch"
    model.compile(optimizer="adamw", jit_compile="auto" if torch else True,
                  steps_per_execution=1 if torch else 2)
    history = model.fit(uint8_images(16), batch_size=4, epochs=2, verbose=0)
    assert int(to_numpy(model.step_counter)) == 8
    assert float(to_numpy(model.total_steps)) == 8  # sized by fit
    assert history.history["momentum"][-1] > 0.996
    assert np.isfinite(history.history["loss"]).all()


def test_fit_on_generator_without_length_asks_for_total_steps():
    model = tiny_conmim()
    model.compile(optimizer="adamw")

    def batches():
        while True:
            yield (uint8_images(4),)

    with pytest.raises(ValueError, match="total_steps"):
        model.fit(batches(), epochs=1, verbose=0)



def test_encoders_stand_alone(tmp_path):
    model = tiny_conmim()
    images = np.random.RandomState(0).standard_normal((2, 16, 16, 1)).astype("float32")
    for name in ("encoder", "teacher_encoder"):
        encoder = getattr(model, name)
        path = os.path.join(tmp_path, f"{name}.keras")
        encoder.save(path)
        loaded = keras.saving.load_model(path)
        # fused attention kernels (torch SDPA) may differ in the last bit between calls
        np.testing.assert_allclose(to_numpy(loaded(images)), to_numpy(encoder(images)),
                                   rtol=0, atol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=0.0), "temperature"),
    (dict(base_momentum=1.0, final_momentum=0.99), "base_momentum"),
    (dict(total_steps=0), "total_steps"),
    (dict(mask_generator=kc.RandomUnitMasking((8, 8))), "grid_size"),
    (dict(views=kc.PairedViews(32)), "image size"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_conmim(**kwargs)


def test_momentum_schedule():
    values = [float(to_numpy(kc.momentum_at(s, 100))) for s in (0, 50, 100, 200)]
    np.testing.assert_allclose(values, [0.996, 0.998, 1.0, 1.0], atol=1e-7)
    assert float(to_numpy(kc.momentum_at(3, 0))) == pytest.approx(0.996)


def test_compile_keeps_norms_biases_and_tokens_out_of_weight_decay():
    model = tiny_conmim()
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.05))
    by_name = {v.path.split("/", 1)[1]: v for v in model.encoder.weights}
    for name in ("cls_token", "mask_token", "rel_pos_bias/relative_position_bias_table",
                 "blocks_0/attn/q_bias", "blocks_0/norm1/gamma", "blocks_0/gamma_1"):
        assert not model.optimizer._use_weight_decay(by_name[name]), name
    assert model.optimizer._use_weight_decay(by_name["blocks_0/attn/qkv_kernel"])
    assert model.optimizer._use_weight_decay(model.projector.dense_layers[0].kernel)

