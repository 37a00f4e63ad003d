import json
import os
import subprocess
import sys

import keras
import pytest

from conftest import ROOT


@pytest.mark.skipif(keras.backend.backend() != "torch",
                    reason="orchestrates the recipes (tested on every backend); run once, on torch")
def test_quick_benchmark_writes_table_json_and_plot(tmp_path):
    out = os.path.join(tmp_path, "fm")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "fashion_mnist.py"), "--backend", "torch",
         "--data", "default", "--quick", "--rows", "conmim,scratch_f,random_init", "--batch-size", "16",
         "--pretrain-epochs", "1", "--finetune-epochs", "1", "--out", out],
        capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(os.path.join(out, "results.json")) as f:
        report = json.load(f)
    rows = {r["row"]: r for r in report["rows"]}
    assert set(rows) == {"conmim", "scratch_f", "random_init"}
    assert 0 <= rows["conmim"]["finetune_top1"] <= 100 and "knn" in rows["conmim"]
    assert "finetune_top1" not in rows["random_init"] and 0 <= rows["random_init"]["knn"] <= 100
    assert os.path.isfile(os.path.join(out, "results.png"))
    assert "ConMIM E + fine-tune F" in result.stdout
    assert "random init, frozen (probe reference)" in result.stdout
