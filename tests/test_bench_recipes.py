"""bench/short_run.py, bench/release_setting.py and bench/ship_backbone.py:
their orchestration, with the recipes replaced by stand-ins that write the
recipes' result files (the recipes' own tests run them on every backend, and
check those files; these run once, on torch)."""

import json
import os

import keras
import pytest

from conftest import load_bench_script

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="orchestration of the recipes (tested on every backend); run once, on torch")


def _script(name):
    return load_bench_script(name)


def _with_stand_ins(name, calls):
    """bench/<name>.py with the recipes replaced by stand-ins that write what
    they write (log.csv, config.json, results.json and the encoders in the run
    folder; the probe's result file). Each pre-training command is first
    resolved by the recipe's own parser (flags, types, ranges), so a flag the
    recipe lacks fails here; the recipes' own tests run them on every backend."""
    from keras_conmim.runs.pretrain_config import resolve_config

    module = _script(name)

    def pretrain(cmd, log):
        calls.append(cmd)
        config, _, sources = resolve_config(cmd[1:])
        output = config["output"]
        os.makedirs(output, exist_ok=True)
        with open(os.path.join(output, "log.csv"), "w") as f:
            f.write("epoch,loss,lookup_accuracy\n" + "".join(
                f"{e},{3.5 - 0.1 * e},{0.0625 + 0.01 * e}\n" for e in range(config["epochs"])))
        with open(os.path.join(output, "config.json"), "w") as f:
            json.dump({**config, "recipe_sources": sources}, f)
        for encoder in ("teacher_encoder", "student_encoder"):
            open(os.path.join(output, f"{encoder}.keras"), "w").close()
        return {"chance": 1 / 16, "final_loss": 3.3}, 1.0

    def run_for_results(cmd, log, results=None):
        calls.append(cmd)
        knn = 45.0 if "--from-scratch" not in cmd else 30.0
        return {"results": {"all": {"linear": 40.0, "knn": knn}}}, 1.0

    module.pretrain, module.run_for_results = pretrain, run_for_results
    return module


def test_short_run_compares_variants_by_lookup_accuracy(tmp_path, capsys):
    calls = []
    short_run = _with_stand_ins("short_run", calls)
    argv = ["--backend", "torch", "--epochs", "2", "--steps-per-epoch", "2",
            "--variants", "release,sincos", "--extra=--image-size 16 --batch-size 8",
            "--out", str(tmp_path), "--probe", "--probe-weight-decay", "1e-4"]
    short_run.main(argv)
    pretrains = [c for c in calls if c[0] == "recipes/pretrain.py"]
    probes = [c for c in calls if c[0] == "recipes/linear_probe.py"]
    assert len(pretrains) == 2 and len(probes) == 4  # teacher and student of each variant
    assert all("--no-resume" in c and "--image-size" in c for c in pretrains)
    assert all(c[c.index("--probe-weight-decay") + 1] == "0.0001" for c in probes)
    with open(os.path.join(tmp_path, "short_run.json")) as f:
        report = json.load(f)
    rows = {r["variant"]: r for r in report["rows"]}
    assert set(rows) == {"release", "sincos"}
    for row in rows.values():
        assert row["lookup_by_epoch"] == [6.25, 7.25] and row["chance"] == 6.25  # 1/16 patches
        assert row["batch_size"] == 8 and row["teacher_knn"] == 45.0
        assert row["times_chance"] == 1.16
    assert "--mask-token-position sincos" in rows["sincos"]["flags"]
    out = capsys.readouterr().out
    assert "release" in out and "x chance" in out and "T kNN / lin" in out
    # --resume keeps the rows; other settings are refused
    calls.clear()
    short_run.main([*argv, "--resume"])
    assert not calls
    short_run.main(["--report", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        short_run.main([*argv[:-3], "--resume"])  # without --probe
    assert "other settings" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        short_run.main(["--variants", "release,bigger"])
    assert "bigger" in capsys.readouterr().err


def test_release_setting_probes_teacher_student_and_random_init(tmp_path, capsys):
    calls = []
    bench = _with_stand_ins("release_setting", calls)
    bench.main(["--backend", "torch", "--data", "default", "--epochs", "1",
                "--steps-per-epoch", "2", "--probe-epochs", "1", "--probe-weight-decay", "1e-4",
                "--out", str(tmp_path)])
    pretrain, *probes = calls
    assert pretrain[0] == "recipes/pretrain.py" and "--no-resume" in pretrain
    assert [c[0] for c in probes] == ["recipes/linear_probe.py"] * 3
    assert all(c[c.index("--resize") + 1] == "center" for c in probes)  # 28 px padded to 32
    assert "--from-scratch" in probes[2]
    with open(os.path.join(tmp_path, "results.json")) as f:
        report = json.load(f)
    assert set(report["probes"]) == {"teacher_encoder", "student_encoder", "random_init"}
    assert report["probes"]["random_init"]["knn"] == 30.0
    assert report["recipe"]["resize"] == "center" and report["recipe"]["mask_unit"] == 2
    assert report["recipe"]["mask_token_position"] == "none"  # the release's layout
    assert len(report["lookup_by_epoch"]) == 1
    out = capsys.readouterr().out
    assert "teacher kNN gain over random init: +15.00" in out and "chance 1.56" in out
    bench.main(["--report", "--out", str(tmp_path)])
    assert "random init" in capsys.readouterr().out


def test_ship_backbone_ships_the_encoder_with_better_probes(tmp_path):
    import keras_conmim as kc
    from conftest import tiny_vit

    ship = _script("ship_backbone")
    pretrain = os.path.join(tmp_path, "results", "conmim", "pretrain")
    os.makedirs(pretrain)
    teacher, student = tiny_vit(name="teacher"), tiny_vit(hidden_dim=32, name="student")
    teacher.save(os.path.join(pretrain, "teacher_encoder.keras"))
    student.save(os.path.join(pretrain, "student_encoder.keras"))
    with open(os.path.join(pretrain, "config.json"), "w") as f:
        json.dump({"backend": "torch", "preset": "vit_mini_p4_28", "epochs": 3}, f)
    row = {"row": "conmim", "label": "ConMIM E + fine-tune", "pretrain_epochs": 3,
           "finetune": {"F=1/all": {"top1": 80.0}, "F=1/10": {"top1": 50.0}},
           "probes": {"all": {"knn": 60.0, "linear": 61.0, "student_knn": 65.0,
                              "student_linear": 66.0},
                      "10": {"knn": 30.0, "linear": 31.0, "student_knn": 35.0,
                             "student_linear": 36.0}}}
    report = {"command": "bench/fashion_mnist.py", "machine": "x86_64", "labels_per_class": "10,all",
              "rows": [row, {"row": "raw_pixels", "label": "raw pixels", "finetune": {},
                             "probes": {"all": {"knn": 85.0, "linear": 84.0}}}]}
    with open(os.path.join(tmp_path, "results", "results.json"), "w") as f:
        json.dump(report, f)
    out = os.path.join(tmp_path, "shipped")
    os.makedirs(out)
    ship.main(["--results", os.path.join(tmp_path, "results"), "--out", out])
    shipped = kc.load_encoder(os.path.join(out, ship.NAME))
    assert shipped.hidden_dim == 32  # the student: better kNN and linear
    with open(os.path.join(out, "CARD.md")) as f:
        card = f.read()
    assert "student (its frozen probes beat" in card
    assert "| 36.00 / 35.00 | 66.00 / 65.00 |" in card  # the shipped student's probes
    assert "| raw pixels | - | 84.00 / 85.00 |" in card and "| 80.00 | 50.00 |" in card
    ship.main(["--results", os.path.join(tmp_path, "results"), "--out", out, "--encoder", "teacher"])
    assert kc.load_encoder(os.path.join(out, ship.NAME)).hidden_dim == 16


def test_ship_backbone_from_one_run_and_its_fine_tuning_sweep(tmp_path, capsys):
    import keras_conmim as kc
    from conftest import tiny_vit

    ship = _script("ship_backbone")
    run = os.path.join(tmp_path, "run")
    pretrain = os.path.join(run, "pretrain")
    os.makedirs(pretrain)
    tiny_vit(name="teacher").save(os.path.join(pretrain, "teacher_encoder.keras"))
    tiny_vit(hidden_dim=32, name="student").save(os.path.join(pretrain, "student_encoder.keras"))
    with open(os.path.join(pretrain, "config.json"), "w") as f:
        json.dump({"backend": "torch", "preset": "vit_mini_p4_28", "epochs": 6, "mask_unit": 2,
                   "lr": 5e-4, "recipe_sources": {"mask_unit": "flag", "lr": "preset"}}, f)
    def probe_file(name, linear, knn):  # what recipes/linear_probe.py --results-json writes
        with open(os.path.join(run, name), "w") as f:
            json.dump({"probed": "x, flatten pooling", "k": 20, "test_images": 10000,
                       "results": {"10": {"linear": linear, "knn": knn}}}, f)

    probe_file("probe_flatten.json", 60.0, 50.0)
    sweep, baseline = (os.path.join(tmp_path, d) for d in ("sweep", "baseline"))
    for folder, results in ((sweep, {"conmim|flatten|10/15|0": 61.5, "conmim|flatten|10/15|1": 62.5}),
                            (baseline, {"conmim|flatten|10/15|0": 11.0,  # another encoder's
                                        "scratch|flatten|10/15|0": 58.25,
                                        "scratch|mean_flatten|10/15|0": 12.0,  # another arm
                                        "scratch|flatten|all/1|0": 13.0})):  # another cell
        os.makedirs(folder)
        with open(os.path.join(folder, "results.json"), "w") as f:
            json.dump({"machine": "x86_64", "encoder": "e.keras", "arms": {"flatten": "--pooling flatten"},
                       "results": results, "commands": {}}, f)
    out = os.path.join(tmp_path, "shipped")
    os.makedirs(out)
    argv = ["--pretrain", pretrain, "--sweep", sweep, "--baseline-sweep", baseline, "--out", out]
    with pytest.raises(SystemExit, match="probe_student_flatten.json"):  # auto needs both probes
        ship.main(argv)
    probe_file("probe_student_flatten.json", 70.0, 66.0)
    ship.main(argv)
    assert kc.load_encoder(os.path.join(out, ship.NAME)).hidden_dim == 32  # the better student
    with open(os.path.join(out, "CARD.md")) as f:
        card = f.read()
    assert "the student after 6 epochs" in card and "--mask-unit 2" in card and "--lr" not in card
    assert "62.00 [61.50 62.50]" in card and "58.25 [58.25]" in card  # conmim, then scratch
    assert "11.00" not in card and "12.00" not in card and "13.00" not in card
    assert "top-1 70.00%" in card  # the shipped encoder's probes first
    ship.main([*argv, "--encoder", "teacher"])
    assert kc.load_encoder(os.path.join(out, ship.NAME)).hidden_dim == 16
    with pytest.raises(SystemExit):
        ship.main(["--pretrain", pretrain, "--out", out])
    assert "--pretrain and --sweep go together" in capsys.readouterr().err
