import importlib.util
import json
import os

import keras
import pytest

import keras_conmim as kc
from conftest import ROOT, tiny_vit, uint8_images

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="a diagnostic script over the library (tested on every backend); run once, on torch")


def _sweep():
    path = os.path.join(ROOT, "bench", "probe_sweep.py")
    spec = importlib.util.spec_from_file_location("probe_sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variants_and_checkpoints_are_probed(tmp_path, capsys):
    sweep = _sweep()
    small = ["--backend", "torch", "--data", "default", "--bank", "64", "--queries", "32",
             "--batch-size", "8", "--out", str(tmp_path)]
    sweep.main([*small, "--variants", "random,weak_teacher", "--steps", "2"])
    with open(os.path.join(tmp_path, "probe_sweep.json")) as f:
        rows = {r["variant"]: r for r in json.load(f)["rows"]}
    assert set(rows) == {"random", "weak_teacher"}
    assert "student_knn" not in rows["random"] and "lookup" in rows["weak_teacher"]
    for row in rows.values():
        assert 0 <= row["teacher_knn"] <= 100 and 0 <= row["teacher_linear"] <= 100

    model = kc.ConMIM(tiny_vit(image_shape=(28, 28, 1)), projector=kc.ProjectionHead(16, 8),
                      total_steps=4, seed=0)
    model.compile(optimizer="adamw")
    model.fit(uint8_images(8, size=28), batch_size=4, epochs=1, verbose=0)
    saved = os.path.join(tmp_path, "ckpt.keras")
    model.save(saved)
    sweep.main([*small, "--checkpoints", saved])
    with open(os.path.join(tmp_path, "checkpoints.json")) as f:
        (row,) = json.load(f)["rows"]
    assert row["change"] == "saved model at step 2" and "student_knn" in row
    assert "ckpt.keras" in capsys.readouterr().out


def test_unknown_variant_and_missing_checkpoint_fail_at_once(capsys):
    sweep = _sweep()
    with pytest.raises(SystemExit):
        sweep.parse_args(["--variants", "base,bigger_model"])
    err = capsys.readouterr().err
    assert "bigger_model" in err and "weak_teacher" in err
    with pytest.raises(SystemExit):
        sweep.parse_args(["--checkpoints", "nope.keras"])
    assert "not found: nope.keras" in capsys.readouterr().err
