import os

import keras
import numpy as np
import pytest

from keras_conmim.integrations.export import ServingEncoder, export_encoder
from conftest import randomize_weights, tiny_vit, to_numpy

BACKEND = keras.backend.backend()


def _encoder_and_images():
    vit = tiny_vit(image_shape=(16, 16, 3))
    randomize_weights(vit)
    images = np.random.RandomState(0).uniform(0, 255, (3, 16, 16, 3)).astype("float32")
    return vit, images


def test_keras_export_round_trip(tmp_path):
    vit, images = _encoder_and_images()
    path = export_encoder(vit, os.path.join(tmp_path, "enc.keras"))
    expected = ServingEncoder(vit)(images)
    loaded = keras.saving.load_model(path)
    out = loaded(images)
    assert out["patch_tokens"].shape == (3, 16, 16) and out["pooled"].shape == (3, 16)
    for key in ("patch_tokens", "pooled"):
        np.testing.assert_allclose(to_numpy(out[key]), to_numpy(expected[key]), atol=1e-6)


@pytest.mark.skipif(BACKEND == "torch", reason="SavedModel export runs on jax/tensorflow")
def test_saved_model_serves_the_same_features(tmp_path):
    tf = pytest.importorskip("tensorflow")
    vit, images = _encoder_and_images()
    path = export_encoder(vit, os.path.join(tmp_path, "saved"), format="tf_saved_model")
    expected = {k: to_numpy(v) for k, v in ServingEncoder(vit)(images).items()}
    loaded = tf.saved_model.load(path)  # keep a reference: its variables die with it
    served = loaded.serve(tf.constant(images))
    for key in ("patch_tokens", "pooled"):
        np.testing.assert_allclose(served[key].numpy(), expected[key], atol=1e-5)
    if BACKEND == "tensorflow":  # Keras' TFSMLayer exists for the TF backend only
        out = keras.layers.TFSMLayer(path, call_endpoint="serve")(images)
        np.testing.assert_allclose(to_numpy(out["pooled"]), expected["pooled"], atol=1e-5)


@pytest.mark.skipif(BACKEND == "torch", reason="ONNX export runs on jax/tensorflow")
def test_onnx_export_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("jax2onnx" if BACKEND == "jax" else "tf2onnx")
    vit, images = _encoder_and_images()
    path = export_encoder(vit, os.path.join(tmp_path, "enc.onnx"), format="onnx")
    assert sorted(os.listdir(tmp_path)) == ["enc.onnx"]  # no temporary file left
    session = ort.InferenceSession(path)
    assert [i.name for i in session.get_inputs()] == ["images"]
    expected = {k: to_numpy(v) for k, v in ServingEncoder(vit)(images).items()}
    for batch in (images, images[:1]):  # the batch size stays free
        served = dict(zip([o.name for o in session.get_outputs()],
                          session.run(None, {"images": batch})))
        assert sorted(served) == ["patch_tokens", "pooled"]
        for key in served:
            np.testing.assert_allclose(served[key], expected[key][: len(batch)], atol=1e-5)


def test_gelu_is_exact():
    from keras_conmim.models.layers import gelu
    from math import erf

    x = np.linspace(-6, 6, 101).astype("float32")
    expected = np.array([0.5 * v * (1 + erf(v / np.sqrt(2))) for v in x.astype("float64")])
    np.testing.assert_allclose(to_numpy(gelu(keras.ops.convert_to_tensor(x))), expected,
                               atol=1e-6)


def test_bad_format_and_backend():
    vit, _ = _encoder_and_images()
    with pytest.raises(ValueError, match="keras, tf_saved_model, onnx"):
        export_encoder(vit, "x", format="tflite")
    if BACKEND == "torch":
        for format in ("tf_saved_model", "onnx"):
            with pytest.raises(ValueError, match="jax or tensorflow"):
                export_encoder(vit, "x", format=format)


def test_load_encoder_finds_the_vit_in_every_file(tmp_path):
    from keras_conmim import ConMIM
    from keras_conmim.downstream.classifier import ViTClassifier
    from keras_conmim.models.loading import load_encoder
    from keras_conmim.atomic import save_atomic

    vit, images = _encoder_and_images()
    expected = to_numpy(vit(images))
    model = ConMIM(vit, seed=0)
    for name, obj in [("vit", vit), ("serving", ServingEncoder(vit)), ("conmim", model),
                      ("classifier", ViTClassifier(vit, 3))]:
        path = save_atomic(obj, os.path.join(tmp_path, f"{name}.keras"))
        np.testing.assert_allclose(to_numpy(load_encoder(path)(images)), expected, atol=1e-6)
    pixel = ConMIM(tiny_vit(image_shape=(16, 16, 3)), objective="pixel", seed=0)
    path = save_atomic(pixel, os.path.join(tmp_path, "pixel.keras"))
    with pytest.raises(ValueError, match="which='student'"):
        load_encoder(path)
    assert load_encoder(path, which="student").name == pixel.encoder.name
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_encoder(os.path.join(tmp_path, "missing.keras"))
    corrupt = os.path.join(tmp_path, "corrupt.keras")
    with open(corrupt, "wb") as f:
        f.write(b"not a zip archive")
    with pytest.raises(ValueError, match="is not a .keras file: it is no zip archive"):
        load_encoder(corrupt)
    import zipfile

    checkpoint = os.path.join(tmp_path, "conmim.pth")  # torch.save writes a zip archive too
    with zipfile.ZipFile(checkpoint, "w") as f:
        f.writestr("archive/data.pkl", b"")
    with pytest.raises(ValueError, match=r"PyTorch checkpoint.*convert\.from_torch"):
        load_encoder(checkpoint)


def test_export_recipe_checks_the_written_file(tmp_path):
    from conftest import run_recipe
    from keras_conmim.atomic import save_atomic

    vit, _ = _encoder_and_images()
    source = save_atomic(vit, os.path.join(tmp_path, "vit.keras"))
    format, name = ("keras", "out.keras") if BACKEND == "torch" else ("onnx", "out.onnx")
    if format == "onnx":
        pytest.importorskip("jax2onnx" if BACKEND == "jax" else "tf2onnx")
    done = run_recipe("export", "--encoder", source, "--format", format,
                      "--output", os.path.join(tmp_path, name))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "max |exported - keras|" in done.stdout and os.path.isfile(os.path.join(tmp_path, name))
    again = run_recipe("export", "--encoder", source, "--format", format,
                       "--output", os.path.join(tmp_path, name))
    assert again.returncode != 0 and "exists" in again.stderr


def test_text_writes_are_atomic(tmp_path):
    # the benchmark drivers write through the same function
    from fashion_mnist import write_text_atomic as bench_write
    from keras_conmim.atomic import write_text_atomic

    for write in (write_text_atomic, bench_write):
        path = os.path.join(tmp_path, f"{write.__module__}.json")
        write(path, '{"a": 1}')
        with pytest.raises(TypeError):
            write(path, 12345)  # fails mid-write: the old file stays, no partial one
        with open(path) as f:
            assert f.read() == '{"a": 1}'
        assert not [n for n in os.listdir(tmp_path) if "partial" in n]
    nested = write_text_atomic(os.path.join(tmp_path, "new", "run.json"), "x")
    assert open(nested).read() == "x"
