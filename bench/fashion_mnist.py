"""Fashion-MNIST benchmark: does ConMIM pre-training help, against training
from scratch, the pixel-regression baseline and the ablations?

    apt-get install -y dataset-fashion-mnist
    python bench/fashion_mnist.py --pretrain-epochs 8 --finetune-epochs 8     # CPU, hours
    python bench/fashion_mnist.py --scale 10 --batch-size 256                 # a GPU
    python bench/fashion_mnist.py --data default --quick                     # smoke test, minutes

Every row uses the same encoder preset (vit_mini_p4_28), seed and fine-tune
recipe (recipes/finetune.py); pre-trained rows pre-train E epochs with
recipes/pretrain.py (the preset's recipe) and fine-tune F; the scratch rows
train the same classifier F and E + F epochs. Linear probe and kNN
(recipes/linear_probe.py) read the encoder a row fine-tunes from, and for
teacher rows the student as well (columns S-linear, S-kNN).
Writes `results.json` and `results.png` into --out and prints one table;
nothing in it is typed in.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from recipes.linear_probe import parse_result  # noqa: E402  (no keras import)
PRETRAINED = {
    # row: (pretrain flags, encoder to fine-tune and probe)
    "conmim": ([], "teacher_encoder"),
    "pixel": (["--objective", "pixel"], "student_encoder"),
    "no_momentum": (["--base-momentum", "0", "--final-momentum", "0"], "teacher_encoder"),
    "symmetric_views": (["--symmetric-views"], "teacher_encoder"),
    "absolute_position": (["--position-embedding", "absolute"], "teacher_encoder"),
}
LABELS = {
    "conmim": "ConMIM E + fine-tune F",
    "pixel": "pixel regression (SimMIM) E + F",
    "no_momentum": "ConMIM, no momentum teacher",
    "symmetric_views": "ConMIM, symmetric views",
    "absolute_position": "ConMIM, absolute positions",
    "scratch_f": "from scratch, F epochs",
    "scratch_ef": "from scratch, E + F epochs",
    "random_init": "random init, frozen probes only",
}


def run(cmd, log):
    start = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, *cmd], stdout=f, stderr=subprocess.STDOUT,
                              cwd=ROOT, text=True)
    elapsed = time.perf_counter() - start
    with open(log) as f:
        lines = [line for line in f.read().replace("\r", "\n").splitlines() if line.strip()]
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n" + "\n".join(lines[-20:]))
    return lines[-1], elapsed


def percent(line, key):
    return float(line.split(key, 1)[1].split("%", 1)[0].split()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("jax", "tensorflow", "torch"), default="jax")
    p.add_argument("--data", default="idx:/usr/share/datasets/fashion-mnist",
                   help="idx:DIR with the four Fashion-MNIST files, or default (packaged slice)")
    p.add_argument("--pretrain-epochs", type=int, default=8)
    p.add_argument("--finetune-epochs", type=int, default=8)
    p.add_argument("--scale", type=float, default=1.0, help="multiplies both epoch counts")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rows", default=",".join(LABELS), help=f"subset of {','.join(LABELS)}")
    p.add_argument("--quick", action="store_true", help="2 steps per epoch: a smoke test")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "fashion_mnist"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true",
                   help="keep the rows --out/results.json already has (same E, F, batch, data, "
                   "backend) and run only the missing ones: a stopped run continues")
    p.add_argument("--report", action="store_true",
                   help="only print the table and redraw the plot from --out/results.json "
                   "(for a run that was stopped between rows)")
    p.add_argument("--finetune-flags", default="--mixup 0 --cutmix 0",
                   help="extra recipes/finetune.py flags for every row (default: no MixUp/CutMix, "
                   "which need long schedules)")
    args = p.parse_args(argv)
    args.command = " ".join(["bench/fashion_mnist.py", *(sys.argv[1:] if argv is None else argv)])
    if args.report:
        with open(os.path.join(args.out, "results.json")) as fh:
            report = json.load(fh)
        print_table(report)
        plot(report["rows"], os.path.join(args.out, "results.png"))
        return
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in LABELS]
    if unknown:
        p.error(f"unknown rows {unknown}; valid: {', '.join(LABELS)}")
    kind, _, folder = args.data.partition(":")
    if kind == "idx" and not os.path.isfile(os.path.join(folder, "train-images-idx3-ubyte.gz")):
        p.error(f"no Fashion-MNIST IDX files in {folder}: apt-get install -y dataset-fashion-mnist "
                "or pass --data default")
    e = max(1, round(args.pretrain_epochs * args.scale))
    f = max(1, round(args.finetune_epochs * args.scale))
    os.makedirs(args.out, exist_ok=True)
    common = ["--backend", args.backend, "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
    quick = ["--steps-per-epoch", "2"] if args.quick else []
    pretrain_data = (os.path.join(folder, "train-images-idx3-ubyte.gz") if kind == "idx" else None)
    probe_epochs = "3" if args.quick else "100"
    # Short schedules: warm up over a fifth of the run, at most one epoch.
    pretrain_warmup = ["--warmup-epochs", str(min(0.5, e / 5))]
    finetune_common = ["--warmup-epochs", str(min(1.0, f / 5)), *args.finetune_flags.split()]

    machine = f"{platform.machine()}, {os.cpu_count()} cores, backend {args.backend}"
    results, done = [], {}
    previous = os.path.join(args.out, "results.json")
    if args.resume and os.path.isfile(previous):
        with open(previous) as fh:
            old = json.load(fh)
        same = (old["E"], old["F"], old["batch_size"], old["data"], old["machine"], old["quick"])
        if same != (e, f, args.batch_size, args.data, machine, args.quick):
            p.error(f"--resume: {previous} was made with other settings {same}")
        done = {r["row"]: r for r in old["rows"]}
    for row in rows:
        if row in done:
            results.append(done[row])
            print(f"{row}: kept from {previous}", flush=True)
            continue
        work = os.path.join(args.out, row)
        os.makedirs(work, exist_ok=True)
        entry = {"row": row, "label": LABELS[row], "pretrain_epochs": 0, "finetune_epochs": f}
        wall = 0.0
        if row == "random_init":  # frozen features of the untrained encoder: no fine-tuning
            linear, knn, seconds = frozen_probe(
                args, probe_epochs, work, ["--from-scratch", "--preset", "vit_mini_p4_28",
                                           "--seed", str(args.seed)])
            entry.update(finetune_epochs=0, linear=linear, knn=knn, wall_clock_s=round(seconds, 1))
            results.append(entry)
            print(f"{row}: {entry}", flush=True)
            write_report(args, machine, e, f, rows, results)
            continue
        if row in PRETRAINED:
            flags, encoder_name = PRETRAINED[row]
            cmd = ["recipes/pretrain.py", *common, *quick, *flags, *pretrain_warmup, "--epochs", str(e),
                   "--output", os.path.join(work, "pretrain"), "--no-resume",
                   "--view-grid-every", str(max(e, 1))]
            if pretrain_data:
                cmd += ["--data", f"idx:{pretrain_data}"]
            _, seconds = run(cmd, os.path.join(work, "pretrain.log"))
            wall += seconds
            encoder = os.path.join(work, "pretrain", f"{encoder_name}.keras")
            entry["linear"], entry["knn"], _ = frozen_probe(args, probe_epochs, work,
                                                            ["--encoder", encoder])
            if encoder_name == "teacher_encoder":  # the student too: on short runs it leads
                student = os.path.join(work, "pretrain", "student_encoder.keras")
                entry["student_linear"], entry["student_knn"], _ = frozen_probe(
                    args, probe_epochs, work, ["--encoder", student])
            finetune = ["--encoder", encoder]
            entry["pretrain_epochs"] = e
        else:
            finetune = ["--from-scratch", "--preset", "vit_mini_p4_28"]
            if row == "scratch_ef":
                entry["finetune_epochs"] = e + f
        line, seconds = run(["recipes/finetune.py", *common, *quick, *finetune, *finetune_common,
                             "--data", args.data,
                             "--epochs", str(entry["finetune_epochs"]),
                             "--output", os.path.join(work, "classifier.keras")],
                            os.path.join(work, "finetune.log"))
        entry["finetune_top1"] = percent(line, "test top-1")
        entry["wall_clock_s"] = round(wall + seconds, 1)
        results.append(entry)
        print(f"{row}: {entry}", flush=True)
        write_report(args, machine, e, f, rows, results)

    with open(os.path.join(args.out, "results.json")) as fh:
        report = json.load(fh)
    print_table(report)
    plot(results, os.path.join(args.out, "results.png"))


def frozen_probe(args, probe_epochs, work, encoder_flags):
    """recipes/linear_probe.py on the encoder `encoder_flags` name: (linear, kNN, seconds)."""
    line, seconds = run(["recipes/linear_probe.py", "--backend", args.backend, *encoder_flags,
                         "--data", args.data, "--probe-epochs", probe_epochs],
                        os.path.join(work, "probe.log"))
    return (*parse_result(line), seconds)


def write_report(args, machine, e, f, rows, results):
    """results.json, written after every row so a stopped run keeps what it measured."""
    report = {"machine": machine, "data": args.data, "E": e, "F": f,
              "batch_size": args.batch_size, "quick": args.quick,
              "command": args.command, "complete": len(results) == len(rows),
              "rows": results}
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(report, fh, indent=2)


def print_table(report):
    print(f"\nFashion-MNIST, vit_mini_p4_28, E={report['E']} F={report['F']}, "
          f"batch {report['batch_size']}, {report['machine']}")
    print(f"{'row':<34} {'fine-tune':>9} {'linear':>7} {'kNN':>6} {'S-linear':>8} {'S-kNN':>6} "
          f"{'wall-clock':>11}")
    for r in report["rows"]:
        cell = lambda key: f"{r[key]:.2f}" if key in r else "-"  # noqa: E731
        print(f"{r['label']:<34} {cell('finetune_top1'):>9} {cell('linear'):>7} {cell('knn'):>6} "
              f"{cell('student_linear'):>8} {cell('student_knn'):>6} {r['wall_clock_s']:>10.0f}s")
    if not report.get("complete", True):
        print("(stopped between rows: the rows above are all that ran)")


def plot(results, path):
    """Horizontal bars of fine-tune top-1, drawn with PIL (no matplotlib)."""
    from PIL import Image, ImageDraw

    results = [r for r in results if "finetune_top1" in r]
    width, bar_h, left = 720, 28, 260
    img = Image.new("RGB", (width, 40 + bar_h * len(results)), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 10), "Fashion-MNIST fine-tune top-1 (%)", fill="black")
    for i, r in enumerate(results):
        y = 35 + i * bar_h
        length = int((width - left - 60) * r["finetune_top1"] / 100)
        draw.text((10, y + 6), r["label"], fill="black")
        draw.rectangle([left, y + 4, left + length, y + bar_h - 4], fill=(70, 110, 190))
        draw.text((left + length + 6, y + 6), f"{r['finetune_top1']:.2f}", fill="black")
    img.save(path)


if __name__ == "__main__":
    main()
