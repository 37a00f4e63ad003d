"""recipes/pretrain.py as a user types it (a new process: the backend chosen
from --backend before Keras loads), then its files read as a user's code
would."""

import json
import os

import keras
import numpy as np
import pytest

import keras_conmim  # noqa: F401  (registers the classes for load_model)

from conftest import recipe_command, run_recipe


def test_recipe_runs_and_writes_models(tmp_path):
    backend = keras.backend.backend()
    out = os.path.join(tmp_path, "run")
    result = recipe_command("pretrain", "--epochs", "1", "--steps-per-epoch", "3",
                  "--batch-size", "8", "--mask", "block", "--output", out,
                  "--view-grid-every", "1", "--image-size", "16")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("done:") and "images/s" in last and "lookup accuracy" in last
    assert os.path.abspath(out) in last
    assert f"backend={backend}" in result.stdout
    files = set(os.listdir(out))
    assert {"conmim.keras", "student_encoder.keras", "teacher_encoder.keras", "config.json",
            "log.csv", "checkpoints", "views"} <= files
    # the last (keep) and the initial state, kept for a NaN to step back to
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == [
        "ckpt-00000000.keras", "ckpt-00000003.keras"]
    assert os.listdir(os.path.join(out, "views")) == ["views-epoch0001.png"]
    with open(os.path.join(out, "log.csv")) as f:
        header = f.readline().strip().split(",")
    assert {"loss", "lookup_accuracy", "momentum", "learning_rate", "images_per_second"} <= set(header)
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["mask"] == "block" and config["recipe_sources"]["mask"] == "flag"
    assert config["recipe_sources"]["lr"] == "preset"
    assert "pre-training recipe (vit_mini_p4_28):" in result.stdout
    assert 'mask                 "block"   <- flag' in result.stdout
    try:
        import tensorboard  # noqa: F401
        import tensorflow  # noqa: F401
    except ImportError:
        pass
    else:
        events = [f for _, _, fs in os.walk(os.path.join(out, "tensorboard")) for f in fs]
        assert any(f.startswith("events.out.tfevents") for f in events)
    teacher = keras.saving.load_model(os.path.join(out, "teacher_encoder.keras"))
    tokens = teacher(np.zeros((1, 16, 16, 1), "float32"))
    assert tokens.shape == (1, 17, 128)
    model = keras.saving.load_model(os.path.join(out, "conmim.keras"))
    assert int(keras.ops.convert_to_numpy(model.step_counter)) == 3
    with open(os.path.join(out, "results.json")) as f:  # what scripts read, not the log
        results = json.load(f)
    assert results["step"] == 3 and results["chance"] == 1 / 16
    assert results["final_loss"] == results["history"]["loss"][-1] and np.isfinite(results["final_loss"])
    assert 0 <= results["lookup_accuracy"] <= 1 and results["skipped_files"] == 0

    probe = run_recipe("linear_probe", "--encoder", os.path.join(out, "teacher_encoder.keras"),
                       "--probe-epochs", "3", "--probe-weight-decay", "1e-4",  # not cross-validated
                       "--results-json", os.path.join(tmp_path, "probe.json"))
    assert probe.returncode == 0, probe.stderr[-3000:]
    line = probe.stdout.strip().splitlines()[-1]
    assert line.startswith("linear probe top-1") and "kNN (k=20)" in line
    with open(os.path.join(tmp_path, "probe.json")) as f:
        probed = json.load(f)
    from keras_conmim.runs.cli import result_lines

    assert list(probed["results"]) == ["all"] and result_lines(probed) == [line]


def test_bad_flags_fail_at_once_with_choices(tmp_path):
    from keras_conmim.errors import ConfigError
    from keras_conmim.runs.pretrain_config import resolve_config

    for argv, words in ((["--preset", "vit_gigantic"], ["vit_mini_p4_28", "vit_base_p16_224"]),
                        (["--backend", "numpy"], ["jax", "torch"]),
                        (["--batch-size", "0"], ["batch_size=0: must be an integer >= 1"])):
        with pytest.raises(ConfigError) as error:
            resolve_config(argv)
        assert all(w in str(error.value) for w in words), (argv, str(error.value))
    if keras.backend.backend() != "torch":
        return  # the command line's one line and exit status: once (it imports Keras first)
    result = recipe_command("pretrain", "--batch-size", "0", "--output", str(tmp_path / "run"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: invalid configuration:" in result.stderr
    assert "batch_size=0: must be an integer >= 1" in result.stderr
    assert not (tmp_path / "run").exists()
