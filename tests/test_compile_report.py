"""bench/compile_report.py: the train step lowered and compiled by XLA without
running it; on a small preset, XLA's FLOP count agrees with the analytic
step_flops, the memory figures are there, and nothing in the step talks to
the host."""

import keras
import pytest

from conftest import load_bench_script

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax",
                                reason="the compile report lowers the JAX step")


def test_compile_report_on_a_small_preset(capsys):
    script = load_bench_script("compile_report")
    report = script.main(["--preset", "vit_mini_p4_28", "--batch-size", "16",
                          "--precision", "float32", "--device-gib", "1"])
    # softmax, norms, GELU, views and EMA are left out of step_flops: a few %
    assert 0.95 < report["flops_ratio"] < 1.10, report["flops_ratio"]
    assert report["host_transfers"] == 0, report["host_transfer_ops"]
    assert report["temp_bytes"] > 0 and report["argument_bytes"] > 0
    assert report["temp_bytes_per_image"] > 0 and report["max_batch_in_device"] > 16
    out = capsys.readouterr().out
    assert "FLOPs: XLA" in out and "host transfers / callbacks inside the step: 0" in out
    assert "the most that fits is about" in out
