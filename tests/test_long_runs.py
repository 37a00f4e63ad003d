"""Resume, NaN safety, config validation and mixed precision."""

import json
import os
import signal
import time

import keras
import numpy as np
import pytest

import keras_conmim as kc
from keras_conmim.models import callbacks as cb
from conftest import recipe_command, tiny_vit, to_numpy, uint8_images
from keras_conmim.runs.pretrain_config import resolve_config

BACKEND = keras.backend.backend()
SMALL = ["--image-size", "16", "--patch-size", "4", "--batch-size", "32", "--epochs", "2",
         "--steps-per-epoch", "6", "--checkpoint-every", "2", "--view-grid-every", "100"]


def _start(out, *extra, log=None):
    """The recipe as a new process (to be killed); output to a pipe, or to the
    file `log` (for a run nobody reads while it goes: a full pipe would block it)."""
    return recipe_command("pretrain", "--output", out, *SMALL, *extra, start=True, log=log)


def _teacher_weights(out):
    model = keras.saving.load_model(os.path.join(out, "conmim.keras"))
    return [to_numpy(v) for v in model.weights]


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    # The uninterrupted reference runs beside the interrupted run (CI time).
    straight = os.path.join(tmp_path, "straight")
    reference_log = os.path.join(tmp_path, "straight.log")
    reference = _start(straight, log=reference_log)
    interrupted = os.path.join(tmp_path, "interrupted")
    proc = _start(interrupted)
    ckpt = os.path.join(interrupted, "checkpoints", "ckpt-00000008.keras")
    deadline = time.time() + 900
    while not os.path.exists(ckpt) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # mid-epoch 2 (steps 9..12)
    proc.communicate()
    assert not os.path.exists(os.path.join(interrupted, "conmim.keras")), "was not interrupted"
    for name in os.listdir(os.path.join(interrupted, "checkpoints")):
        assert cb.CHECKPOINT_PATTERN.match(name) or name.endswith(".partial.keras"), name

    proc = _start(interrupted)  # same command: resumes
    log = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, log[-3000:]
    reference.wait(timeout=900)
    with open(reference_log) as f:
        assert reference.returncode == 0, f.read()[-3000:]
    assert "resuming from" in log and "ckpt-0000000" in log
    for a, b in zip(_teacher_weights(straight), _teacher_weights(interrupted)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    kept = sorted(os.listdir(os.path.join(interrupted, "checkpoints")))
    assert kept == ["ckpt-00000000.keras", "ckpt-00000008.keras", "ckpt-00000010.keras",
                    "ckpt-00000012.keras"]
    with open(os.path.join(interrupted, "log.csv")) as f:
        rows = f.read().strip().splitlines()
    assert len(rows) >= 3  # header + both epochs
    # a resumed run's rows keep the header's columns (images_per_second too)
    assert all(len(r.split(",")) == len(rows[0].split(",")) for r in rows), rows


@pytest.mark.parametrize("argv,message", [
    (["--patch-size", "5"], "patch_size=5 does not divide image_size=28"),
    (["--mask-ratio", "1.5"], "mask_ratio=1.5: must be in (0, 1)"),
    (["--batch-size", "0"], "batch_size=0: must be an integer >= 1"),
    (["--preset", "vit_enormous"], "preset='vit_enormous': choose one of vit_mini_p4_28"),
    (["--data", "ftp:x"], "use default, idx:PATH, dir:PATH, tfds:NAME, coco:"),
    (["--precision", "fp8"], "precision='fp8': choose one of float32"),
])
def test_bad_config_fails_before_training(argv, message):
    # The resolver, in this process (the command line's exit is checked once,
    # in test_recipe_pretrain.py: each command imports Keras first)
    from keras_conmim.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        resolve_config(argv)
    assert message in str(error.value)


def test_config_file_and_flag_override(tmp_path):
    path = os.path.join(tmp_path, "run.yaml")
    with open(path, "w") as f:
        f.write("lr: 0.001\nepochs: 7\nmask: block\n")
    config, resume, sources = resolve_config(["--config", path, "--epochs", "3"])
    assert config["lr"] == 0.001 and config["epochs"] == 3 and config["mask"] == "block"
    assert resume and sources["epochs"] == "flag" and sources["lr"] == "file"
    json_path = os.path.join(tmp_path, "run.json")
    with open(json_path, "w") as f:
        json.dump({"learning_rate": 1}, f)
    from keras_conmim.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown keys"):
        resolve_config(["--config", json_path])


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_with_float32_loss(policy):
    if BACKEND == "torch" and policy == "mixed_bfloat16":
        pass  # CPU bf16 matmuls work in torch 2.x
    keras.config.set_dtype_policy(policy)
    try:
        model = kc.ConMIM(tiny_vit(), projector=kc.ProjectionHead(16, 8), seed=0)
        model.compile(optimizer="adamw")
        if policy == "mixed_float16":
            assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        out = model.pretext_outputs(uint8_images(4), training=False)
        assert str(to_numpy(out["loss"]).dtype) == "float32"
        history = model.fit(uint8_images(8), batch_size=4, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
        assert model.encoder.compute_dtype == policy.split("_")[1]
        assert all(str(v.dtype) == "float32" for v in model.teacher_encoder.weights)
    finally:
        keras.config.set_dtype_policy("float32")
