"""The speed benches run end to end on tiny budgets, and the FLOP model is the
formula its docstring states (the figures themselves are printed, not tested)."""

import sys

import keras
import pytest

from conftest import load_bench_script

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="bench scripts: run once, on torch (each measures its backend in a subprocess)")


def _script(name):
    return load_bench_script(name)


def test_step_flops_of_vit_base_and_the_bench_reports_mfu(capsys):
    speed = _script("step_speed")
    import keras_conmim as kc

    base = kc.PRESETS["vit_base_p16_224"]
    n, t, d, f, layers, h, o = 196, 197, 768, 3072, 12, 4096, 256
    encoder = 2 * n * 16 * 16 * 3 * d + layers * (8 * t * d * d + 4 * t * t * d + 4 * t * d * f)
    head = 2 * t * (d * h + h * h + h * o)
    expected = 3 * (encoder + head + 2 * n * n * o) + encoder + head
    assert speed.step_flops(base["config"], base["projector"]) == expected
    assert abs(expected / 1e9 - 173.6) < 0.1  # the figure the docstrings quote
    rows = speed.main(["--backend", "torch", "--batch-size", "4", "--steps", "1",
                       "--peak-tflops", "2", "--views-share", "--attention", "both"])
    assert [r["attention"] for r in rows] == ["fused", "manual"]
    row = rows[0]
    assert row["mfu"] == pytest.approx(row["tflops"] / 2)
    assert row["tflops"] == pytest.approx(row["images_per_s"] * row["gflop_per_image"] / 1e3)
    assert "views_masks_share" in row and "views_masks_share" not in rows[1]
    out = capsys.readouterr().out
    assert "MFU" in out and "machine: " in out and ("AVX-512" in out or "no AVX-512" in out)


def test_input_speed_times_both_decoders(capsys):
    pytest.importorskip("tensorflow")
    _script("input_speed").main(["--backend", "torch", "--skip-step", "--jpegs", "8",
                                 "--jpeg-batch", "2"])
    out = capsys.readouterr().out
    for name in ("tf.io in tf.data, 1 core", "PIL in tf.data, 1 core", "PIL, numpy PyDataset"):
        assert name in out
    assert "cores of this machine it needs" in out and "1,728 images/s" in out


def test_input_speed_runs_without_tensorflow(capsys, monkeypatch):
    # the GPU machines this is measured on have JAX and torch, no TensorFlow
    # (None in sys.modules: `import tensorflow` raises ImportError, whether
    # or not another test imported it already)
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    script = _script("input_speed")
    script.main(["--backend", "torch", "--skip-step", "--jpegs", "8", "--jpeg-batch", "2"])
    out = capsys.readouterr().out
    assert "tf.data" not in out.replace("the tf.data rows are left out", "")
    assert "default data, numpy PyDataset" in out and "PIL, numpy PyDataset, 1 core" in out
    assert "TensorFlow is not installed: the tf.data rows are left out" in out


def test_release_baseline_is_the_model_ours_imports():
    """bench/release_torch.py (the baseline `step_speed.py --release` times) is
    the release's model: its state_dict has the release's names, which our
    importer maps, and ours then computes the same tokens and projections."""
    torch = pytest.importorskip("torch")
    import numpy as np

    from conftest import to_numpy
    from keras_conmim.integrations.convert import from_torch

    release = _script("release_torch")
    config = dict(image_shape=(8, 8, 1), patch_size=4, num_layers=2, num_heads=2, hidden_dim=16,
                  mlp_dim=32)
    projector = dict(hidden_dim=24, output_dim=8)
    torch.manual_seed(0)
    student, _ = release.build(config, projector)
    with torch.no_grad():  # away from the zero-initialised tables and biases
        for param in student.parameters():
            param.add_(0.1 * torch.randn_like(param))
    models = from_torch({k: v.detach().numpy() for k, v in student.state_dict().items()},
                        num_heads=2)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, 8, 8, 1)).astype("float32")
    mask = rng.random((3, 4)) < 0.5
    theirs = student.tokens(torch.from_numpy(images.transpose(0, 3, 1, 2)), torch.from_numpy(mask))
    ours = models["encoder"](images, patch_mask=mask)
    np.testing.assert_allclose(to_numpy(ours), theirs.detach().numpy(), atol=2e-5)
    student.train()
    projected = student(torch.from_numpy(images.transpose(0, 3, 1, 2)), torch.from_numpy(mask))
    z = to_numpy(models["projector"](ours, training=True))[:, 1:]
    z = z / np.linalg.norm(z, axis=-1, keepdims=True)
    np.testing.assert_allclose(z, projected.detach().numpy(), atol=2e-4)
    assert release.release_step_rate(config, projector, batch_size=4, steps=1) > 0


def test_repeated_rounds_give_medians_and_each_rounds_ratio():
    speed = _script("step_speed")

    def row(backend, images_per_s):
        return dict(backend=backend, attention="fused", images_per_s=images_per_s,
                    gflop_per_image=0.5, jit_compile=True, warmup_seconds=1.0)

    rounds = [[row("release (plain torch)", 100.0), row("jax", 90.0)],
              [row("release (plain torch)", 50.0), row("jax", 60.0)],  # a slow spell
              [row("release (plain torch)", 110.0), row("jax", 99.0)]]
    release, jax_row = speed.combine(rounds, peak_tflops=1.0)
    assert jax_row["runs"] == [90.0, 60.0, 99.0] and jax_row["images_per_s"] == 90.0
    # The median of the rounds' own ratios (0.9, 1.2, 0.9), not 90 / 100.
    assert jax_row["vs_release_runs"] == pytest.approx([0.9, 1.2, 0.9])
    assert jax_row["vs_release"] == pytest.approx(0.9)
    assert jax_row["tflops"] == pytest.approx(90.0 * 0.5 / 1e3) == jax_row["mfu"]
    assert release["vs_release"] == 1.0


def test_profile_puts_each_xla_kernel_in_its_part():
    profile = _script("profile_step")
    names = {"vit": "student encoder", "projection_head": "student head",
             "teacher_encoder": "teacher encoder", "paired_views": "views"}
    step = "jit(train_step)/"
    assert profile.jax_part(step + "jvp(vit)/blocks_1/fc1/dot_general", names) == (
        "student encoder", "forward")
    assert profile.jax_part(step + "transpose(jvp(vit))/blocks_1/attn/reshape", names) == (
        "student encoder", "backward")
    assert profile.jax_part(step + "jvp(teacher_encoder)/blocks_0/mul", names) == (
        "teacher encoder", "forward")
    assert profile.jax_part(step + "jvp(paired_views)/crop/gather", names)[0] == "views"
    assert profile.jax_part(step + "adam_w/mul", names)[0] == "optimizer"
    assert profile.jax_part(step + "transpose(jvp(bnp,bmp->bnm))/dot_general", names) == (
        "loss", "backward")
    assert profile.jax_part(step + "mul", names)[0] == "EMA update"
    assert profile.is_matmul("ynn_fusion.12") and profile.is_matmul("aten::mm")
    assert not profile.is_matmul("copy_bitcast_fusion.1")


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_profile_accounts_for_every_part_of_the_step(backend, capsys):
    pytest.importorskip(backend)
    profile = _script("profile_step")
    result = profile.main(["--backend", backend, "--batch-size", "8", "--steps", "1"]
                          + (["--release"] if backend == "torch" else []))
    seconds = {}
    for row in result["rows"]:
        key = (row["part"], row["direction"])
        seconds[key] = seconds.get(key, 0) + row["seconds_per_step"]
    for key in [("views", "forward"), ("student encoder", "forward"),
                ("student encoder", "backward"), ("student head", "backward"),
                ("teacher encoder", "forward"), ("teacher head", "forward"),
                ("optimizer", "forward"), ("EMA update", "forward")]:
        assert seconds.get(key, 0) > 0, key
    # The matrix products are found, and most time has a part.
    assert sum(r["seconds_per_step"] for r in result["rows"] if r["kind"] == "matmul") > 0
    assert sum(seconds.get(("other", d), 0) for d in ("forward", "backward")) < 0.2 * sum(
        seconds.values())
    out = capsys.readouterr().out
    assert "student encoder   backward" in out and "largest kernels" in out
    if backend == "torch":  # the release's step, profiled beside ours: its nn.Linear is addmm
        assert result["release_operators"]["aten::addmm"] > 0
        assert sum(result["operators"].values()) == pytest.approx(
            sum(r["seconds_per_step"] for r in result["rows"]))
        assert "against the release's step" in out


def test_speed_scripts_refuse_bad_flags_before_running(tmp_path, capsys):
    speed, profile = _script("step_speed"), _script("profile_step")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for script, argv, message in [
            (speed, ["--repeats", "0"], "--repeats must be >= 1"),
            (speed, ["--steps", "0"], "--steps must be >= 1"),
            (speed, ["--preset", "nope"], "--preset 'nope': choose one of vit_mini_p4_28"),
            (speed, ["--report", str(bad)], "not a table this script wrote with --json"),
            (profile, ["--batch-size", "0"], "--batch-size must be >= 1"),
            (profile, ["--preset", "nope"], "--preset 'nope': choose one of")]:
        with pytest.raises(SystemExit):
            script.main(argv)
        assert message in capsys.readouterr().err, argv
