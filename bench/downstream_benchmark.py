"""Does pre-training pay downstream? Segmentation (mIoU), box detection
(COCO mAP@[.5:.95], AP50) and instance segmentation (COCO mask mAP@[.5:.95],
AP50) on Fashion-MNIST canvases, each row one run of recipes/segment.py,
recipes/detect.py or recipes/instance_segment.py at the same labelled budget and the
same number of optimizer steps: the shipped ConMIM backbone, the same ViT at
random init, the SimMIM-style pixel-regression backbone (when its file is
there), and a KerasHub ResNet-18 from scratch.

    python bench/downstream_benchmark.py --backend torch                  # every row not yet run, in order
    python bench/downstream_benchmark.py --rows segment_deeplabv3_pretrained_500,segment_deeplabv3_random_500
    python bench/downstream_benchmark.py --report                         # the table from the committed files

Each row runs in bench/results/downstream/<row>/ (the recipe's run folder:
a stopped row resumes; results.json, config.json, log.csv and
predictions.png are committed, model.keras is not). Test canvases come from
the Fashion-MNIST test items; validation canvases from training items the
training canvases never use (the recipe was chosen on validation only).
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "results", "downstream")
DATA = "idx:/usr/share/datasets/fashion-mnist"
# The pixel-regression (SimMIM) student pre-trained with the shipped ConMIM
# backbone's settings (keras_conmim/weights/CARD.md) but --objective pixel.
PIXEL = os.path.join(ROOT, "bench", "results", "pixel_unit2_e6", "pretrain",
                     "student_encoder.keras")
PIXEL_COMMAND = ("python recipes/pretrain.py --backend torch --preset vit_mini_p4_28 "
                 "--data idx:/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz "
                 "--epochs 6 --batch-size 128 --warmup-epochs 0.5 --mask-unit 2 --objective pixel "
                 "--output bench/results/pixel_unit2_e6/pretrain")  # about 25 minutes here
# ConMIM pre-trained on the task's own images (#43): 60,000 unlabelled 48 px
# canvases made from the training items, written as a COCO set, read by
# pretrain.py's --data coco: (a user's own detection set is read the same way).
TASK = os.path.join(ROOT, "bench", "results", "canvas48_e2", "pretrain", "teacher_encoder.keras")
TASK_COMMAND = (
    "python recipes/make_canvases.py --data idx:/usr/share/datasets/fashion-mnist --output "
    "/work/data/canvases48 --train-canvases 60000 --test-canvases 10 --canvas-size 48 "
    "--max-items 2 && python recipes/pretrain.py --backend torch --preset vit_mini_p4_48 "
    "--data coco:/work/data/canvases48/train/instances.json --seed 0 "
    "--output bench/results/canvas48_e2/pretrain")  # about an hour here
# Pixel regression (SimMIM) pre-trained on the same canvases with the same
# settings: the simplest pretext that could win on the task's own images.
TASK_PIXEL = os.path.join(ROOT, "bench", "results", "canvas48_pixel_e2", "pretrain",
                          "student_encoder.keras")
TASK_PIXEL_COMMAND = (TASK_COMMAND.replace("bench/results/canvas48_e2/", "bench/results/canvas48_pixel_e2/")
                      + " --objective pixel")  # 16 minutes alone here
STARTS = {  # name: recipe flags
    "pretrained": ["--init", "pretrained"],
    "random": ["--init", "random"],
    "pixel": ["--init", "pretrained", "--encoder", PIXEL],
    "resnet18": ["--init", "resnet18"],
    "task": ["--init", "pretrained", "--encoder", TASK],
    "task_pixel": ["--init", "pretrained", "--encoder", TASK_PIXEL],
}
# starts made by a pre-training run of their own: (the file, the command that makes it)
MADE = {"pixel": (PIXEL, PIXEL_COMMAND), "task": (TASK, TASK_COMMAND),
        "task_pixel": (TASK_PIXEL, TASK_PIXEL_COMMAND)}
# (task, head, start, training canvases, seed, extra flags), in the order they run.
# The seed draws the training / validation / test canvases, the random starts
# and the heads' initial weights, the flips and the drop-path masks.
ROWS = [
    ("segment", "deeplabv3", "pretrained", 500, 0, []),
    ("segment", "deeplabv3", "random", 500, 0, []),
    ("detect", "retinanet", "pretrained", 500, 0, []),
    ("detect", "retinanet", "random", 500, 0, []),
    ("segment", "deeplabv3", "resnet18", 500, 0, []),
    ("detect", "retinanet", "resnet18", 500, 0, []),
    ("segment", "deeplabv3", "pretrained", 5000, 0, []),
    ("detect", "retinanet", "pretrained", 5000, 0, []),
    ("segment", "deeplabv3", "random", 5000, 0, []),
    ("detect", "retinanet", "random", 5000, 0, []),
    ("detect", "yolov8", "pretrained", 500, 0, ["--canvas-size", "64"]),
    ("segment", "deeplabv3", "pixel", 500, 0, []),
    ("detect", "retinanet", "pixel", 500, 0, []),
    ("detect", "yolov8", "random", 500, 0, ["--canvas-size", "64"]),
    ("detect", "yolov8", "pretrained", 5000, 0, ["--canvas-size", "64"]),
    ("detect", "retinanet", "pretrained", 500, 0, ["--canvas-size", "64"]),  # the head or the canvas?
    ("detect", "retinanet", "pretrained", 500, 1, []),
    ("detect", "retinanet", "random", 500, 1, []),
    ("detect", "yolov8", "pretrained", 500, 1, ["--canvas-size", "64"]),
    ("detect", "yolov8", "random", 500, 1, ["--canvas-size", "64"]),
    ("segment", "deeplabv3", "pretrained", 500, 1, []),
    ("segment", "deeplabv3", "random", 500, 1, []),
    ("detect", "yolov8", "random", 5000, 0, ["--canvas-size", "64"]),
    ("segment", "segformer", "pretrained", 500, 0, []),
    ("detect", "retinanet", "pretrained", 500, 2, []),
    ("detect", "retinanet", "random", 500, 2, []),
    ("segment", "deeplabv3", "pretrained", 500, 2, []),
    ("segment", "deeplabv3", "random", 500, 2, []),
    ("segment", "deeplabv3", "resnet18", 5000, 0, []),
    ("detect", "retinanet", "resnet18", 5000, 0, []),
    ("instance", "yolact", "pretrained", 500, 0, []),
    ("instance", "yolact", "random", 500, 0, []),
    ("instance", "yolact", "resnet18", 500, 0, []),
    ("segment", "upernet", "pretrained", 500, 0, []),
    ("instance", "yolact", "pretrained", 5000, 0, []),
    ("segment", "upernet", "pretrained", 5000, 0, []),
    ("instance", "yolact", "random", 5000, 0, []),
    ("instance", "yolact", "resnet18", 5000, 0, []),
    ("segment", "segformer", "pretrained", 5000, 0, []),
    # #43: pre-training on the task's images, at the budgets where it should pay
    ("segment", "deeplabv3", "task", 500, 0, []),
    ("segment", "deeplabv3", "task", 100, 0, []),
    ("segment", "deeplabv3", "random", 100, 0, []),
    ("detect", "yolov8", "task", 500, 0, ["--canvas-size", "64"]),
    ("detect", "yolov8", "task", 100, 0, ["--canvas-size", "64"]),
    ("detect", "yolov8", "random", 100, 0, ["--canvas-size", "64"]),
    ("segment", "deeplabv3", "pretrained", 100, 0, []),
    ("detect", "yolov8", "pretrained", 100, 0, ["--canvas-size", "64"]),
    ("segment", "deeplabv3", "task", 500, 1, []),
    ("segment", "deeplabv3", "task", 500, 2, []),
    ("segment", "deeplabv3", "task", 100, 1, []),
    ("segment", "deeplabv3", "random", 100, 1, []),
    ("segment", "deeplabv3", "task", 100, 2, []),
    ("segment", "deeplabv3", "random", 100, 2, []),
    ("detect", "yolov8", "task", 100, 1, ["--canvas-size", "64"]),
    ("detect", "yolov8", "random", 100, 1, ["--canvas-size", "64"]),
    ("detect", "yolov8", "task", 500, 1, ["--canvas-size", "64"]),
    ("detect", "yolov8", "task", 100, 2, ["--canvas-size", "64"]),
    ("detect", "yolov8", "random", 100, 2, ["--canvas-size", "64"]),
    ("detect", "yolov8", "task", 500, 2, ["--canvas-size", "64"]),
    ("detect", "yolov8", "random", 500, 2, ["--canvas-size", "64"]),
    # the default detector's scratch baseline (#43's boxes target), ResNet-18 under YOLOv8
    ("detect", "yolov8", "resnet18", 500, 0, ["--canvas-size", "64"]),
    # #43: the pixel-regression pretext on the same canvases, the task start's simplest rival
    *[(task, head, "task_pixel", canvases, seed, extra) for seed in (0, 1, 2)
      for canvases in (500, 100)
      for task, head, extra in (("segment", "deeplabv3", []),
                                ("detect", "yolov8", ["--canvas-size", "64"]))],
]
METRIC = {"segment": "miou", "detect": "map", "instance": "mask_map"}  # each task's score
AP50 = {"detect": "ap50", "instance": "mask_ap50"}  # and its AP50, where it has one
RECIPE = {"segment": "segment.py", "detect": "detect.py", "instance": "instance_segment.py"}
COMMON = ["--data", DATA, "--val-canvases", "300", "--test-canvases", "1000"]


# The canvas size each head's rows use unless a row says otherwise (YOLOv8
# reads P3-P5, so its canvas is a multiple of 32).
HEAD_CANVAS = {"yolov8": 64}
DEFAULT_CANVAS = 48  # presets.DOWNSTREAM_RECIPE


def row_name(task, head, start, canvases, seed, extra):
    """The run folder's name; seed 0 has no suffix (the first rows ran before
    seeds), nor has the head's usual canvas size."""
    size = int(extra[extra.index("--canvas-size") + 1]) if "--canvas-size" in extra \
        else DEFAULT_CANVAS
    return (f"{task}_{head}_{start}_{canvases}" + (f"_seed{seed}" if seed else "")
            + (f"_canvas{size}" if size != HEAD_CANVAS.get(head, DEFAULT_CANVAS) else ""))


def command(row, backend):
    task, head, start, canvases, seed, extra = row
    return [f"recipes/{RECIPE[task]}", "--backend", backend, "--head", head, *STARTS[start],
            "--train-canvases", str(canvases), *COMMON, "--seed", str(seed), *extra,
            "--output", os.path.relpath(os.path.join(OUT, row_name(*row)), ROOT)]


def read(row):
    path = os.path.join(OUT, row_name(*row), "results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def differences(a="pretrained", b="random"):
    """[(task, head, canvases, canvas px, {seed: test points a - b}, mean)] for
    every (task, head, budget, canvas size) where starts `a` and `b` both have
    a result at the same seed: pre-training's share, seed by seed (the
    metric: mIoU for segmentation, box mAP for detection)."""
    results = {}
    for row in ROWS:
        r = read(row)
        if r is not None:
            task, head, start, canvases, seed, _ = row
            results[(task, head, canvases, r["recipe"]["canvas_size"], seed, start)] = r
    out = []
    for setting in dict.fromkeys(k[:4] for k in results):
        key = METRIC[setting[0]]
        per_seed = {}
        for seed in sorted({k[4] for k in results if k[:4] == setting}):
            ra, rb = results.get((*setting, seed, a)), results.get((*setting, seed, b))
            if ra is not None and rb is not None:
                per_seed[seed] = ra["test"][key] - rb["test"][key]
        if per_seed:
            out.append((*setting, per_seed, sum(per_seed.values()) / len(per_seed)))
    return out


def report():
    """The table of every row with a result, the per-seed differences, and the rows still owed."""
    # No speed column: rows may share the CPU; bench/downstream_speed.py measures speed alone.
    lines = ["task     head       start       canvases  px  seed  steps  val      test     test AP50  "
             "backend"]
    owed = []
    for row in ROWS:
        r = read(row)
        task, head, start, canvases, seed, _ = row
        if r is None:
            owed.append(row_name(*row))
            continue
        key = METRIC[task]
        ap50 = f"{r['test'][AP50[task]]:9.2f}" if task in AP50 else f"{'-':>9}"
        lines.append(f"{task:<8} {head:<10} {start:<11} {canvases:>8}  {r['recipe']['canvas_size']:>2}  "
                     f"{seed:>4}  {r['steps']:>5}  "
                     f"{r['val'][key]:6.2f}   {r['test'][key]:6.2f}   {ap50}  {r['backend']}")
    lines.append("segment: mIoU % (10 classes + background); detect: box mAP@[.5:.95] % and AP50 "
                 "%; instance: mask mAP@[.5:.95] % and mask AP50 %; "
                 f"test = {COMMON[COMMON.index('--test-canvases') + 1]} canvases of test "
                 "items, val = 300 of held-out training items")
    for a, b in (("pretrained", "random"), ("pretrained", "pixel"), ("task", "random"),
                 ("task", "pretrained"), ("task", "task_pixel")):
        for task, head, canvases, px, per_seed, mean in differences(a, b):
            seeds = ", ".join(f"seed {s}: {d:+.2f}" for s, d in per_seed.items())
            lines.append(f"{a} - {b}, {task} {head} {canvases} canvases of {px} px: {seeds}; "
                         f"mean {mean:+.2f} (test)")
    if owed:
        lines.append("not run yet: " + ", ".join(owed))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="torch", choices=("jax", "tensorflow", "torch"))
    p.add_argument("--rows", default=None, help="comma list of row names (default: all, in order)")
    p.add_argument("--report", action="store_true", help="print the table and exit")
    args = p.parse_args(argv)
    if args.report:
        print(report())
        return
    names = {row_name(*r): r for r in ROWS}
    wanted = args.rows.split(",") if args.rows else list(names)
    unknown = [n for n in wanted if n not in names]
    if unknown:
        p.error(f"unknown rows {unknown}; rows: {', '.join(names)}")
    for name in wanted:
        row = names[name]
        if read(row) is not None:
            continue
        if row[2] in MADE and not os.path.isfile(MADE[row[2]][0]):
            path, how = MADE[row[2]]
            print(f"{name}: skipped, {os.path.relpath(path, ROOT)} is not here; pre-train it "
                  f"with: {how}", flush=True)
            continue
        cmd = command(row, args.backend)
        print(f"{name}: python {' '.join(cmd)}", flush=True)
        os.makedirs(os.path.join(OUT, name), exist_ok=True)
        with open(os.path.join(OUT, f"{name}.log"), "a") as log:
            done = subprocess.run([sys.executable, *cmd], cwd=ROOT, stdout=log,
                                  stderr=subprocess.STDOUT)
        if done.returncode:
            print(f"{name}: failed (exit {done.returncode}); see {OUT}/{name}.log", flush=True)
            continue
        print(report(), flush=True)


if __name__ == "__main__":
    main()
