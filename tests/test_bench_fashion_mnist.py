"""The benchmark's orchestration: which recipe runs with which flags for each
row, how their result files become the table, --resume and --report. The
recipes it calls are replaced by stand-ins that return the result files the
recipes write (each recipe's own test checks those files and runs it for
real)."""

import importlib.util
import json
import os

import keras
import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="pure orchestration (no Keras computation); run once, on torch")

def _probe_results(cmd):
    counts = cmd[cmd.index("--labels-per-class") + 1].split(",")
    linear = 48.72 if "--raw-pixels" not in cmd else 80.0
    return {"results": {n: {"linear": linear, "knn": 52.72} for n in counts}}


FINETUNE = {"top1": 60.25, "recipe": {"epochs": 15, "mixup": 0.2},
            "recipe_sources": {"epochs": "flag", "mixup": "recipe"},
            "head": "initialised x0.001 (the release's)"}


def _bench(calls):
    spec = importlib.util.spec_from_file_location(
        "fashion_mnist_bench", os.path.join(ROOT, "bench", "fashion_mnist.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def run_for_results(cmd, log, results=None):
        calls.append(cmd)
        if cmd[0] == "recipes/linear_probe.py":
            return _probe_results(cmd), 10.0
        assert cmd[0] == "recipes/finetune.py", cmd
        # without --no-resume: as if stopped after 3 epochs before
        return {**FINETUNE, "resumed_after_epoch": 0 if "--no-resume" in cmd else 3}, 10.0

    def pretrain(cmd, log):
        calls.append(cmd)
        return {"final_loss": 3.5, "lookup_accuracy": 0.05, "chance": 0.0204}, 10.0

    module.run_for_results, module.pretrain = run_for_results, pretrain
    return module


def _flag(cmd, name):
    return cmd[cmd.index(name) + 1]


def test_rows_run_the_right_recipes_and_fill_the_tables(tmp_path, capsys):
    calls = []
    bench = _bench(calls)
    argv = ["--backend", "torch", "--data", "default", "--pretrain-epochs", "3",
            "--finetune-epochs", "1,5", "--labels-per-class", "10,all", "--out", str(tmp_path)]
    bench.main([*argv, "--rows", "conmim,scratch,scratch_ef,no_momentum,random_init,raw_pixels"])

    pretrain = [c for c in calls if c[0] == "recipes/pretrain.py"]
    finetune = [c for c in calls if c[0] == "recipes/finetune.py"]
    probes = [c for c in calls if c[0] == "recipes/linear_probe.py"]
    assert len(pretrain) == 2 and all(_flag(c, "--epochs") == "3" for c in pretrain)
    assert all("--no-resume" in c for c in pretrain)  # a fresh run starts over
    assert _flag(pretrain[1], "--base-momentum") == "0"
    assert "--crop-scale-min" not in pretrain[0]  # the preset's recipe decides
    # cells: 10 per class at the largest F, then F=1, F=5 with all labels,
    # each across the rows (cheapest first: a stopped run holds whole columns)
    cells = [(_flag(c, "--epochs"), c[c.index("--labels-per-class") + 1]
              if "--labels-per-class" in c else "all") for c in finetune]
    assert cells[0] == ("5", "10") and cells[-1] == ("5", "all") and ("8", "all") in cells
    conmim = [cell for cell, c in zip(cells, finetune)
              if "--encoder" in c and os.path.join("conmim", "pretrain") in _flag(c, "--encoder")]
    assert conmim == [("5", "10"), ("1", "all"), ("5", "all")]
    assert _flag(finetune[0], "--encoder").endswith(
        os.path.join("conmim", "pretrain", "teacher_encoder.keras"))
    scratch = [c for c in finetune if "--from-scratch" in c]
    assert len(scratch) == 3 + 2  # scratch: 3 cells; scratch_ef: all labels only, E + F epochs
    scratch_ef = [_flag(c, "--epochs") for c in scratch if "--labels-per-class" not in c]
    assert scratch_ef == ["1", "4", "5", "8"]  # scratch F=1, scratch_ef 1 + 3, scratch 5, 5 + 3
    # teacher and student of each teacher row, then the random-init reference and raw pixels
    assert len(probes) == 6 and all(_flag(c, "--labels-per-class") == "10,all" for c in probes)
    assert _flag(probes[1], "--encoder").endswith(
        os.path.join("conmim", "pretrain", "student_encoder.keras"))
    assert "--from-scratch" in probes[4] and "--raw-pixels" in probes[5]
    # each cell checkpoints in its own folder, and a fresh run starts every cell over
    assert all("--no-resume" in c for c in finetune)
    folders = [_flag(c, "--output") for c in finetune]
    assert len(set(folders)) == len(folders)
    assert folders[0] == os.path.join(str(tmp_path), "conmim", "finetune_F5_10")

    with open(os.path.join(tmp_path, "results.json")) as f:
        report = json.load(f)
    assert report["complete"] and (report["E"], report["F"]) == (3, [1, 5])
    rows = {r["row"]: r for r in report["rows"]}
    conmim = rows["conmim"]
    assert conmim["finetune"]["F=5/10"]["top1"] == 60.25
    assert conmim["finetune"]["F=1/all"]["recipe"]["epochs"] == 15
    assert conmim["finetune"]["F=1/all"]["recipe_sources"]["epochs"] == "flag"
    assert conmim["probes"]["all"] == {"linear": 48.72, "knn": 52.72, "student_linear": 48.72,
                                       "student_knn": 52.72}
    assert set(conmim["probes"]) == {"10", "all"}
    assert rows["raw_pixels"]["probes"]["10"]["linear"] == 80.0
    assert not rows["raw_pixels"]["finetune"] and not rows["scratch"]["probes"]
    out = capsys.readouterr().out
    assert "ConMIM E + fine-tune" in out and "raw pixels, probes only" in out
    assert "10/class" in out and "48.72 / 52.72" in out
    assert os.path.isfile(os.path.join(tmp_path, "results.png"))

    calls.clear()  # --resume: cells already there are kept, only the new row runs
    bench.main([*argv, "--rows", "conmim,scratch,scratch_ef,no_momentum,random_init,raw_pixels,"
                "pixel", "--resume"])
    assert [c[0] for c in calls] == ["recipes/pretrain.py", "recipes/linear_probe.py",
                                     "recipes/finetune.py", "recipes/finetune.py",
                                     "recipes/finetune.py"]
    assert all("pixel" in _flag(c, "--encoder") for c in calls[2:])
    assert "--no-resume" not in calls[0]  # a stopped pre-training continues from its checkpoint
    calls.clear()  # a cell lost from results.json is run again, alone
    with open(os.path.join(tmp_path, "results.json")) as f:
        report = json.load(f)
    del report["rows"][0]["finetune"]["F=5/all"]
    report["complete"] = False
    with open(os.path.join(tmp_path, "results.json"), "w") as f:
        json.dump(report, f)
    bench.main([*argv, "--rows", "conmim", "--resume"])
    assert len(calls) == 1 and _flag(calls[0], "--epochs") == "5"
    with open(os.path.join(tmp_path, "results.json")) as f:
        kept = json.load(f)  # rows not asked for this time stay in the report
    assert len(kept["rows"]) == 7 and kept["complete"]
    calls.clear()  # --redo: the named cells run again in the rows asked for, nothing else
    bench.main([*argv, "--rows", "conmim,scratch", "--resume", "--redo", "F=5/10"])
    assert [(_flag(c, "--epochs"), _flag(c, "--labels-per-class")) for c in calls] == [
        ("5", "10"), ("5", "10")]
    assert not any("--no-resume" in c for c in calls)  # a cell stopped mid-run continues
    with open(os.path.join(tmp_path, "results.json")) as f:
        cell = json.load(f)["rows"][0]["finetune"]["F=5/10"]
    assert cell["resumed_after_epoch"] == 3 and cell["top1"] == 60.25
    calls.clear()
    bench.main([*argv, "--rows", "conmim,raw_pixels", "--resume", "--redo", "probes"])
    assert [c[0] for c in calls] == ["recipes/linear_probe.py"] * 3  # teacher, student, pixels
    for bad in (["--redo", "F=7/10", "--resume"], ["--redo", "F=5/10"]):
        with pytest.raises(SystemExit):
            bench.main([*argv, "--rows", "conmim", *bad])
    err = capsys.readouterr().err
    assert "not cells of this run" in err and "--redo needs --resume" in err
    calls.clear()  # other settings: --resume refuses instead of mixing two runs in one table
    with pytest.raises(SystemExit):
        bench.main([*argv[:-4], "--finetune-epochs", "2", "--out", str(tmp_path), "--rows",
                    "scratch", "--resume"])
    assert not calls and "was made with other settings" in capsys.readouterr().err
    bench.main(["--report", "--out", str(tmp_path)])
    assert "from scratch (own recipe)" in capsys.readouterr().out
