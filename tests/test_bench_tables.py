"""bench/doc_tables.py's #43 targets table on made-up rows: means over the
seeds both starts of a pair have, the verdicts (met, missed by how much, not
run). The committed tables themselves are checked by test_docs.py."""

import json
import os

import keras
import pytest

from conftest import load_bench_script

pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch",
                                reason="numbers in files: the backend does not matter")


def test_the_targets_and_share_tables_read_means_over_seeds_and_say_what_is_missing(tmp_path, monkeypatch):
    benchmark = load_bench_script("downstream_benchmark")
    tables = load_bench_script("doc_tables")
    monkeypatch.setattr(benchmark, "OUT", str(tmp_path))
    monkeypatch.setitem(__import__("sys").modules, "downstream_benchmark", benchmark)

    def row(task, head, start, canvases, seed, score, px=48):
        name = benchmark.row_name(task, head, start, canvases, seed,
                                  ["--canvas-size", "64"] if head == "yolov8" else [])
        os.makedirs(tmp_path / name)
        metric = benchmark.METRIC[task]
        (tmp_path / name / "results.json").write_text(json.dumps(
            {"test": {metric: score}, "val": {metric: score}, "steps": 1000,
             "recipe": {"canvas_size": 64 if head == "yolov8" else px}}))

    for seed, (task, random) in enumerate([(30.0, 26.0), (29.0, 26.0), (20.0, 30.0)]):
        row("segment", "deeplabv3", "task", 100, seed, task)
        row("segment", "deeplabv3", "random", 100, seed, random)
    row("detect", "yolov8", "task", 500, 1, 40.0)  # a seed without its pair is left out
    row("detect", "yolov8", "task", 500, 0, 40.0)
    row("detect", "yolov8", "random", 500, 0, 45.5)
    row("segment", "deeplabv3", "resnet18", 500, 0, 50.0)
    row("segment", "deeplabv3", "pretrained", 500, 0, 40.0)
    row("segment", "deeplabv3", "task", 500, 0, 46.0)
    row("segment", "deeplabv3", "task_pixel", 500, 0, 47.0)  # the pixel pretext, same images
    row("detect", "yolov8", "task_pixel", 500, 0, 39.0)
    lines = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:]
             for line in tables.downstream_targets().splitlines()[2:]}
    seg100 = lines["task − random init ≥ +3 (segment, deeplabv3, 100 canvases)"]
    assert seg100 == ["-1.00", "3 (+4.00, +3.00, -10.00)", "missed by 4.00 |"], seg100
    box500 = lines["task − random init ≥ +3 (detect, yolov8, 500 canvases)"]
    assert box500 == ["-5.50", "1 (-5.50)", "missed by 8.50 |"], box500
    assert lines["task − random init ≥ +3 (detect, yolov8, 100 canvases)"][-1] == "not run |"
    assert lines["pre-trained ViT − ResNet-18 scratch ≥ 0 (detect, yolov8, 500 canvases)"][-1] \
        == "not run |"
    pixel = "task − pixel regression on task images ≥ 0"
    assert lines[f"{pixel} (segment, deeplabv3, 500 canvases)"] == ["-1.00", "1 (-1.00)",
                                                                    "missed by 1.00 |"]
    assert lines[f"{pixel} (detect, yolov8, 500 canvases)"] == ["+1.00", "1 (+1.00)", "met |"]
    assert lines[f"{pixel} (segment, deeplabv3, 100 canvases)"][-1] == "not run |"
    gap = [v for k, v in lines.items() if k.startswith("mask gap")]
    assert gap == [["4.00", "-", "met |"]], gap  # shipped gap 10: half is 5

    # the share table: one line per pair and setting, the budgets side by side
    share = {tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in line.split("|")[3:-1]]
             for line in tables.downstream_share().splitlines()[2:]}
    header = tables.downstream_share().splitlines()[0]
    assert "100 canvases: mean (per seed) | 500 canvases: mean (per seed) |" in header, header
    task_random = "ConMIM on the task's images − same ViT, random init"
    assert share[(task_random, "segment (deeplabv3, mIoU)")] == [
        "48", "-1.00 (seeds 0, 1, 2: +4.00, +3.00, -10.00)", "-"]
    assert share[(task_random, "detect (yolov8, box mAP)")] == ["64", "-", "-5.50 (seed 0)"]
    assert share[("ConMIM on the task's images − pixel regression on the task's images",
                  "segment (deeplabv3, mIoU)")] == ["48", "-", "-1.00 (seed 0)"]
