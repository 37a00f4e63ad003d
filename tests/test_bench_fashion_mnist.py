"""The benchmark's orchestration: which recipe runs with which flags for each
row, how their last lines become the table, --resume and --report. The
recipes it calls are replaced by stand-ins that print the recipes' real last
lines (each recipe's own test checks those lines and runs it for real)."""

import importlib.util
import json
import os

import keras
import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="pure orchestration (no Keras computation); run once, on torch")

LAST_LINES = {
    "recipes/pretrain.py": "done: 99.0 images/s, final loss 3.5, lookup accuracy 0.05 (chance "
                           "0.0204), saved to /x",
    "recipes/linear_probe.py": "linear probe top-1 48.72%, kNN (k=20) top-1 52.72% on 10000 test "
                               "images (/x)",
    "recipes/finetune.py": "done: test top-1 60.25% on 10000 images, saved to /x",
}


def _bench(calls):
    spec = importlib.util.spec_from_file_location(
        "fashion_mnist_bench", os.path.join(ROOT, "bench", "fashion_mnist.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def run(cmd, log):
        calls.append(cmd)
        return LAST_LINES[cmd[0]], 10.0

    module.run = run
    return module


def _flag(cmd, name):
    return cmd[cmd.index(name) + 1]


def test_rows_run_the_right_recipes_and_fill_the_table(tmp_path, capsys):
    calls = []
    bench = _bench(calls)
    argv = ["--backend", "torch", "--data", "default", "--pretrain-epochs", "3",
            "--finetune-epochs", "1", "--out", str(tmp_path)]
    bench.main([*argv, "--rows", "conmim,scratch_ef,no_momentum,random_init"])

    pretrain = [c for c in calls if c[0] == "recipes/pretrain.py"]
    finetune = [c for c in calls if c[0] == "recipes/finetune.py"]
    probes = [c for c in calls if c[0] == "recipes/linear_probe.py"]
    assert len(pretrain) == 2 and all(_flag(c, "--epochs") == "3" for c in pretrain)
    assert _flag(pretrain[1], "--base-momentum") == "0"
    assert [_flag(c, "--epochs") for c in finetune] == ["1", "4", "1"]  # scratch: E + F
    assert "--from-scratch" in finetune[1] and _flag(finetune[0], "--encoder").endswith(
        os.path.join("conmim", "pretrain", "teacher_encoder.keras"))
    # teacher and student of each teacher row, then the random-init reference
    assert "--from-scratch" in probes[-1] and len(probes) == 5
    assert _flag(probes[1], "--encoder").endswith(
        os.path.join("conmim", "pretrain", "student_encoder.keras"))
    assert "--crop-scale-min" not in pretrain[0]  # the preset's recipe decides

    with open(os.path.join(tmp_path, "results.json")) as f:
        report = json.load(f)
    assert report["complete"] and (report["E"], report["F"]) == (3, 1)
    rows = {r["row"]: r for r in report["rows"]}
    assert rows["conmim"]["finetune_top1"] == 60.25 and rows["conmim"]["knn"] == 52.72
    assert rows["conmim"]["linear"] == 48.72 and rows["conmim"]["wall_clock_s"] == 20.0  # probe time not counted
    assert rows["conmim"]["student_knn"] == 52.72 and rows["conmim"]["student_linear"] == 48.72
    assert rows["scratch_ef"]["finetune_epochs"] == 4 and "knn" not in rows["scratch_ef"]
    assert "finetune_top1" not in rows["random_init"] and rows["random_init"]["knn"] == 52.72
    out = capsys.readouterr().out
    assert "ConMIM E + fine-tune F" in out and "random init, frozen probes only" in out
    assert os.path.isfile(os.path.join(tmp_path, "results.png"))

    calls.clear()  # --resume: rows already there are kept, only the new one runs
    bench.main([*argv, "--rows", "conmim,scratch_ef,no_momentum,random_init,scratch_f", "--resume"])
    assert [c[0] for c in calls] == ["recipes/finetune.py"]
    calls.clear()  # other settings: --resume refuses instead of mixing two runs in one table
    with pytest.raises(SystemExit):
        bench.main([*argv[:-4], "--finetune-epochs", "2", "--out", str(tmp_path), "--rows",
                    "scratch_f", "--resume"])
    assert not calls and "was made with other settings" in capsys.readouterr().err
    bench.main(["--report", "--out", str(tmp_path)])
    assert "from scratch, F epochs" in capsys.readouterr().out
