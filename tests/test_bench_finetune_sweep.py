"""bench/finetune_sweep.py's orchestration: which recipes/finetune.py runs for
each row, arm, cell and seed, how their result files become the table, --resume
and --report. The recipe is replaced by a stand-in that returns the result
file it writes (tests/test_finetune.py runs the recipe itself)."""

import json
import os
import shlex

import keras
import pytest

from conftest import load_bench_script

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="pure orchestration (no Keras computation); run once, on torch")


def _sweep(calls):
    module = load_bench_script("finetune_sweep")

    def run_for_results(cmd, log, results=None):
        calls.append(cmd)
        top1 = 50 + 10 * ("--from-scratch" not in cmd) + int(cmd[cmd.index("--seed") + 1])
        return {"top1": float(top1)}, 1.0

    module.run_for_results = run_for_results
    return module


def test_every_row_arm_cell_and_seed_runs_once_and_fills_the_table(tmp_path, capsys):
    calls = []
    sweep = _sweep(calls)
    argv = ["--out", str(tmp_path), "--cells", "10/15,all/1", "--seeds", "0,1",
            "--arms", "no_geometry,flatten"]
    sweep.main(argv)
    assert len(calls) == 2 * 2 * 2 * 2  # rows x arms x cells x seeds
    for cmd in calls:
        assert cmd[0] == "recipes/finetune.py" and "--no-resume" in cmd
        flags = " ".join(cmd)
        assert ("--from-scratch --preset vit_mini_p4_28" in flags) != ("--encoder" in flags)
        arm = [a for a, f in sweep.ARMS.items() if " ".join(shlex.split(f)) in flags]
        assert arm and arm[0] in ("no_geometry", "flatten")
        assert ("--labels-per-class 10" in flags) == ("--epochs 15" in flags)
    report = json.load(open(os.path.join(tmp_path, "results.json")))
    assert report["results"]["conmim|flatten|10/15|1"] == 61.0
    assert report["results"]["scratch|no_geometry|all/1|0"] == 50.0
    out = capsys.readouterr().out
    assert "60.50 [60.00 61.00]" in out and "50.50 [50.00 51.00]" in out  # mean [each seed]
    # --resume runs only what is missing; --report reprints without running
    calls.clear()
    sweep.main([*argv[:-2], "--arms", "no_geometry,flatten,geometry", "--resume"])
    assert len(calls) == 2 * 2 * 2 and all("--crop-padding" in " ".join(c) for c in calls)
    calls.clear()
    sweep.main(["--out", str(tmp_path), "--report"])
    assert calls == [] and "geometry" in capsys.readouterr().out


def test_bad_cells_arms_and_mismatched_resume_are_refused(tmp_path, capsys):
    sweep = _sweep([])
    for argv, message in ((["--cells", "10"], "LABELS/EPOCHS"), (["--arms", "magic"], "magic"),
                          (["--rows", "simclr"], "simclr"),
                          (["--rows", "pixel", "--pixel-encoder", "no/such.keras"],
                           "encoder file not found (pixel: no/such.keras)")):
        with pytest.raises(SystemExit):
            sweep.main(["--out", str(tmp_path), *argv])
        assert message in capsys.readouterr().err
    sweep.main(["--out", str(tmp_path), "--cells", "10/1", "--seeds", "0", "--rows", "scratch",
                "--arms", "flatten"])
    with pytest.raises(SystemExit):
        sweep.main(["--out", str(tmp_path), "--cells", "10/1", "--encoder", "other.keras",
                    "--resume"])
    assert "made with other encoder" in capsys.readouterr().err
    assert sweep.parse_cells("10/15,all/1") == [("10", 15), ("all", 1)]


def test_the_pixel_row_fine_tunes_the_pixel_encoder(tmp_path, capsys):
    calls = []
    sweep = _sweep(calls)
    pixel = os.path.join(tmp_path, "student_encoder.keras")
    open(pixel, "w").close()
    argv = ["--out", str(tmp_path), "--cells", "10/15", "--seeds", "0", "--arms", "flatten",
            "--rows", "conmim,pixel,scratch", "--pixel-encoder", pixel]
    sweep.main(argv)
    starts = [cmd[cmd.index("--encoder") + 1] if "--encoder" in cmd else "scratch" for cmd in calls]
    shipped = os.path.join(sweep.ROOT, "keras_conmim", "weights", "conmim_vit_mini_p4_28_fmnist.keras")
    assert starts == [shipped, pixel, "scratch"]
    report = json.load(open(os.path.join(tmp_path, "results.json")))
    assert set(report["results"]) == {"conmim|flatten|10/15|0", "pixel|flatten|10/15|0",
                                      "scratch|flatten|10/15|0"}
    assert report["pixel_encoder"] == os.path.relpath(pixel, sweep.ROOT)
    assert "pixel row" in capsys.readouterr().out
    # rows are listed conmim, pixel, scratch; another pixel encoder is refused on --resume
    with pytest.raises(SystemExit):
        sweep.main([*argv[:-1], __file__, "--resume"])
    assert "made with other pixel_encoder" in capsys.readouterr().err


def test_every_arm_is_a_valid_finetune_command_line():
    # An arm is a set of recipes/finetune.py flags: each must parse, and set
    # what it names, so that a renamed or removed flag fails here and not
    # an hour into a sweep.
    from recipes import finetune

    sweep = load_bench_script("finetune_sweep")
    for arm, flags in sweep.ARMS.items():
        args = finetune.parse_args(["--from-scratch", "--preset", "vit_mini_p4_28",
                                    *shlex.split(flags)])
        assert args.pooling in ("mean", "flatten", "mean+flatten"), arm
        if "--head-init probe" in flags:
            assert args.head_init == "probe", arm


def test_resume_refuses_an_encoder_file_with_other_contents_at_the_same_path(tmp_path, capsys):
    sweep = _sweep([])
    encoder = os.path.join(tmp_path, "backbone.keras")
    with open(encoder, "wb") as f:
        f.write(b"one")
    out = os.path.join(tmp_path, "sweep")
    argv = ["--out", out, "--cells", "10/1", "--seeds", "0", "--rows", "conmim", "--arms",
            "flatten", "--encoder", encoder]
    sweep.main(argv)
    report = json.load(open(os.path.join(out, "results.json")))
    assert report["encoder_sha256"] == sweep.file_sha256(encoder)
    sweep.main([*argv, "--seeds", "1", "--resume"])  # same file: resumes
    with open(encoder, "wb") as f:
        f.write(b"two")
    with pytest.raises(SystemExit):
        sweep.main([*argv, "--seeds", "2", "--resume"])
    assert "other encoder_sha256 (the encoder file at that path" in capsys.readouterr().err
    assert sorted(json.load(open(os.path.join(out, "results.json")))["results"]) == [
        "conmim|flatten|10/1|0", "conmim|flatten|10/1|1"]
