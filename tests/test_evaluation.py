import keras
import numpy as np
import pytest

import keras_conmim as kc
from keras_conmim.downstream import evaluation
from keras_conmim.models.losses import masked_pixel_l1, patchify
from keras_conmim.models.optimizers import LayerDecayAdamW, layer_decay_scales
from conftest import tiny_vit, to_numpy, uint8_images


def _blobs(n, dim=8, classes=4, seed=0, noise=0.3):
    centers = np.random.RandomState(100).standard_normal((classes, dim)) * 3
    rng = np.random.RandomState(seed)
    y = np.arange(n) % classes
    return (centers[y] + noise * rng.standard_normal((n, dim))).astype("float32"), y


def test_knn_matches_brute_force_and_beats_chance():
    x, y = _blobs(200)
    q, qy = _blobs(50, seed=1)
    pred = evaluation.knn_predict(x, y, q, k=5, temperature=0.1)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    expected = []
    for row in qn @ xn.T:
        top = np.argsort(-row)[:5]
        votes = np.zeros(4)
        for i in top:
            votes[y[i]] += np.exp(row[i] / 0.1)
        expected.append(votes.argmax())
    np.testing.assert_array_equal(pred, expected)
    assert evaluation.knn_accuracy(x, y, q, qy, k=20) > 0.9


def test_linear_probe_beats_chance():
    x, y = _blobs(400, noise=1.0)
    q, qy = _blobs(100, seed=1, noise=1.0)
    assert evaluation.linear_probe(x, y, q, qy, epochs=30) > 0.8


def test_linear_head_is_fitted_standardised_and_folded_back_to_raw_features():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(256, 1))
    # the label lives in a feature 1e5 times smaller than the noise
    # beside it: hopeless for AdamW on raw features, easy standardised
    x = np.concatenate([1e-3 * signal, 100 * rng.normal(size=(256, 3))], 1).astype("float32")
    y = (signal[:, 0] > 0).astype("int64")
    kernel, bias, accuracy = evaluation.fit_linear_head(x, y, 2, epochs=1, min_steps=300, lr=5e-2)
    assert kernel.shape == (4, 2) and bias.shape == (2,)
    assert accuracy == np.mean(np.argmax(x @ kernel + bias, 1) == y) > 0.95  # on raw features
    q = np.concatenate([1e-3 * np.array([[1.0], [-1.0]]), np.zeros((2, 3))], 1)
    np.testing.assert_array_equal(np.argmax(q @ kernel + bias, 1), [1, 0])


def test_probe_weight_decay_is_picked_by_stratified_cross_validation(monkeypatch):
    y = np.repeat(np.arange(3), 8)
    x = np.eye(3, dtype="float32")[y]  # feature c says class c
    seen = []

    def fit(features, labels, num_classes, weight_decay, **kwargs):
        seen.append((weight_decay, list(np.bincount(labels, minlength=3))))
        # stand-in heads: the "good" decay reads the features, another votes class 0
        kernel = np.eye(3, dtype="float32") if weight_decay in good else np.zeros((3, 3), "float32")
        return kernel, np.array([1e-3, 0, 0], "float32"), 1.0

    monkeypatch.setattr(evaluation, "fit_linear_head", fit)
    good = {3.0}
    decay, scores = evaluation.select_weight_decay(x, y, 3, candidates=(1e-4, 3.0), folds=4)
    # 4 folds per candidate, each training on 6 images of every class (2 held out)
    assert [c for _, c in seen] == [[6, 6, 6]] * 8
    assert decay == 3.0 and scores == {1e-4: pytest.approx(1 / 3), 3.0: 1.0}
    good = {1e-4, 3.0}  # a tie: the smaller decay
    assert evaluation.select_weight_decay(x, y, 3, candidates=(3.0, 1e-4))[0] == 1e-4
    with pytest.raises(ValueError, match="at least 9 images of a class"):
        evaluation.select_weight_decay(x, y, 3, folds=9)
    # what linear_probe and ViTClassifier.init_head_from_probe call: a number
    # is kept, "cv" is cross-validated, anything else is refused by name
    good = {1.0}
    assert evaluation.resolve_weight_decay(0.5, x, y, 3) == 0.5
    assert evaluation.resolve_weight_decay("cv", x, y, 3) == 1.0  # PROBE_WEIGHT_DECAYS
    for bad in ("auto", -1.0):
        with pytest.raises(ValueError, match="'cv' or a number >= 0"):
            evaluation.resolve_weight_decay(bad, x, y, 3)
    assert evaluation.linear_probe(x, y, x, y, weight_decay="cv") == 1.0


def test_knn_monitor_logs_during_pretraining():
    images = uint8_images(32)
    labels = np.arange(32) % 4
    model = kc.ConMIM(tiny_vit(), projector=kc.ProjectionHead(16, 8), seed=0)
    model.compile(optimizer="adamw")
    monitor = evaluation.KNNMonitor(images[:24], labels[:24], images[24:], labels[24:], k=5)
    history = model.fit(images, batch_size=8, epochs=2, verbose=0, callbacks=[monitor])
    assert len(history.history["knn_accuracy"]) == 2
    assert 0.0 <= history.history["knn_accuracy"][-1] <= 1.0


def test_features_are_pooled_and_normalised():
    vit = tiny_vit()
    images = uint8_images(5)
    features = evaluation.extract_features(vit, images, batch_size=2)
    tokens = to_numpy(vit(kc.normalize_images(images)))
    np.testing.assert_allclose(features, tokens[:, 1:].mean(1), atol=1e-5)


def test_pixel_objective_loss_matches_numpy():
    rng = np.random.RandomState(0)
    images = rng.standard_normal((2, 8, 8, 3)).astype("float32")
    patches = to_numpy(patchify(images, 4))
    assert patches.shape == (2, 4, 48)
    np.testing.assert_array_equal(patches[0, 1], images[0, 0:4, 4:8].reshape(-1))
    pred = rng.standard_normal(patches.shape).astype("float32")
    mask = np.array([[1, 0, 0, 1], [0, 1, 0, 0]], bool)
    expected = np.mean([np.abs(pred[b, n] - patches[b, n]).mean() for b, n in zip(*np.nonzero(mask))])
    np.testing.assert_allclose(to_numpy(masked_pixel_l1(pred, patches, mask)), expected, rtol=1e-6)


def test_pixel_objective_trains_without_teacher_head():
    model = kc.ConMIM(tiny_vit(), projector=kc.ProjectionHead(16, 8), objective="pixel", seed=0)
    trainable = {id(v) for v in model.trainable_variables}
    assert not any(id(v) in trainable for v in model.projector.weights)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    losses = [model.train_on_batch(uint8_images(8), return_dict=True)["loss"] for _ in range(15)]
    assert losses[-1] < losses[0]
    clone = kc.ConMIM.from_config(model.get_config())
    assert clone.objective == "pixel"
    with pytest.raises(ValueError, match="contrast, pixel"):
        kc.ConMIM(tiny_vit(), objective="mse")


def test_no_momentum_ablation_teacher_tracks_student():
    model = kc.ConMIM(tiny_vit(), projector=kc.ProjectionHead(16, 8), base_momentum=0.0,
                      final_momentum=0.0, total_steps=3, seed=0)
    model.compile(optimizer="adamw")
    model.train_on_batch(uint8_images(8))
    for s, t in model.ema_pairs():
        np.testing.assert_array_equal(to_numpy(s), to_numpy(t))


def test_layer_decay_groups_and_factors():
    vit = tiny_vit()  # 2 blocks -> 4 groups
    scales = layer_decay_scales(vit, 0.5)
    by_name = {v.path.split("/", 1)[1]: scales[v.path] for v in vit.weights}
    assert by_name["cls_token"] == by_name["patch_embed/proj/kernel"] == 0.5 ** 3
    assert by_name["blocks_0/attn/qkv_kernel"] == 0.5 ** 2
    assert by_name["blocks_1/fc2/kernel"] == 0.5
    assert by_name["norm/gamma"] == by_name["rel_pos_bias/relative_position_bias_table"] == 1.0


def test_layer_decay_optimizer_scales_updates():
    a = keras.Variable(np.ones(3, "float32"), name="a")
    b = keras.Variable(np.ones(3, "float32"), name="b")
    c = keras.Variable(np.ones(3, "float32"), name="c")
    opt = LayerDecayAdamW(lr_scales={a.path: 0.0, b.path: 1.0, c.path: 0.5},
                          learning_rate=0.1, weight_decay=0.0)
    ref = keras.optimizers.AdamW(learning_rate=0.1, weight_decay=0.0)
    d = keras.Variable(np.ones(3, "float32"), name="d")
    grads = [keras.ops.convert_to_tensor(np.full(3, 0.3, "float32"))] * 3
    opt.apply(grads, [a, b, c])
    ref.apply(grads[:1], [d])
    np.testing.assert_array_equal(to_numpy(a), np.ones(3))
    np.testing.assert_allclose(to_numpy(b), to_numpy(d), rtol=1e-6)
    np.testing.assert_allclose(1 - to_numpy(c), (1 - to_numpy(d)) / 2, rtol=1e-5)
    restored = LayerDecayAdamW.from_config(opt.get_config())
    assert restored.lr_scales == opt.lr_scales



def test_flatten_pooling_keeps_the_layout():
    # Fashion-MNIST is aligned: where the ink is tells the class. Mean pooling
    # of a ViT without absolute positions keeps only what the patches are;
    # flattened patch tokens keep where they are too (measured with the full
    # data: random init 25.0 mean vs 66.5 flatten, linear, 10 per class).
    from keras_conmim.data import class_balanced_indices, load_default

    train, test = load_default("train"), load_default("test")
    index = class_balanced_indices(train.labels, 20, seed=0)
    encoder = kc.ViT.from_preset("vit_mini_p4_28")  # random init
    accuracy = {}
    for pooling in ("mean", "flatten"):
        bank = evaluation.extract_features(encoder, train.images[index], pooling=pooling)
        queries = evaluation.extract_features(encoder, test.images[:500], pooling=pooling)
        accuracy[pooling] = evaluation.linear_probe(bank, train.labels[index], queries, test.labels[:500],
                                                    epochs=30, min_steps=100, weight_decay=1.0)
    assert accuracy["flatten"] > accuracy["mean"] + 0.25, accuracy  # seen: 0.27 vs 0.67


def test_linear_probe_recipe_passes_its_pooling(monkeypatch, capsys):
    from keras_conmim.downstream import evaluation
    from recipes import linear_probe

    seen = []

    def features(encoder, images, batch_size=256, pooling="mean", mean=None, std=None):
        seen.append(pooling)
        return np.random.RandomState(len(seen)).standard_normal((len(images), 4)).astype("float32")

    decays = []

    def probe(*args, weight_decay, **kwargs):
        decays.append(weight_decay)
        return 0.5

    monkeypatch.setattr(evaluation, "extract_features", features)
    monkeypatch.setattr(evaluation, "linear_probe", probe)
    linear_probe.main(["--from-scratch", "--preset", "vit_mini_p4_28", "--pooling", "flatten",
                       "--backend", keras.backend.backend()])
    assert seen == ["flatten", "flatten"]  # bank and queries
    assert "flatten pooling" in capsys.readouterr().out
    # the probe's weight decay: cross-validated with at most 1,000 labels per class
    # (the packaged 4,000 images: 400), else 1e-4, unless the flag fixes it
    linear_probe.main(["--from-scratch", "--preset", "vit_mini_p4_28", "--labels-per-class",
                       "10,all", "--backend", keras.backend.backend()])
    linear_probe.main(["--from-scratch", "--preset", "vit_mini_p4_28", "--probe-weight-decay",
                       "3", "--backend", keras.backend.backend()])
    assert decays == ["cv", "cv", "cv", 3.0]
    with pytest.raises(SystemExit):
        linear_probe.main(["--probe-weight-decay", "-1"])
    assert "auto, cv or a number >= 0" in capsys.readouterr().err
