"""The benchmark's release-setting configuration: the calibration (docs/benchmarks.md) of
the release's own code, rebuilt from this package, probed the same way.

    apt-get install -y dataset-fashion-mnist
    python bench/release_setting.py --backend torch                # ~40 min on 2 cores
    python bench/release_setting.py --data default --epochs 1      # packaged slice, minutes

Setting (preset `vit_mini_p4_32` and its recipe): Fashion-MNIST padded to
32 px, width 128, 6 layers, 4 heads, projector 512 -> 128, batch 128, lr 5e-4
with half an epoch of warmup, random 2x2 units at 75%, crop scale 0.35-1,
brightness/contrast 0.4, light blur, solarize, 3 epochs. Probes (the calibration's):
mean-pooled final-norm patch tokens of the teacher, the student and a
random-init encoder of the same architecture; kNN k=20 T=0.07 and a 30-epoch
linear probe on standardised features, the full train split as bank, the
test split as queries. Also the masked-patch lookup accuracy by epoch.
Writes --out/results.json and prints one table; nothing in it is typed in.
"""

import argparse
import csv
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from keras_conmim.runs import cli
from driver import machine, pretrain, run_for_results, write_text_atomic  # noqa: E402
from keras_conmim.runs.cli import linear_probe_weight_decay as probe_weight_decay  # noqa: E402
PRESET = "vit_mini_p4_32"


def probe(args, encoder_flags, log):
    result, seconds = run_for_results(
        ["recipes/linear_probe.py", "--backend", args.backend, *encoder_flags,
         "--data", args.data, "--resize", "center", "--probe-epochs", str(args.probe_epochs),
         "--seed", str(args.seed), "--probe-weight-decay", str(args.probe_weight_decay)], log)
    (only,) = result["results"].values()
    return {"knn": only["knn"], "linear": only["linear"], "probe_s": round(seconds, 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_backend(p, default="torch")
    p.add_argument("--data", default="idx:/usr/share/datasets/fashion-mnist",
                   help="idx:DIR with the four Fashion-MNIST files, or default (packaged slice)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps-per-epoch", type=int, default=None, help="smoke tests only")
    p.add_argument("--probe-epochs", type=int, default=30)
    p.add_argument("--probe-weight-decay", type=probe_weight_decay, default="auto",
                   help="recipes/linear_probe.py's --probe-weight-decay (auto: 1e-4 with the "
                   "60,000 labels, cross-validated with at most 1,000 per class)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extra", default="", help="recipes/pretrain.py flags added to the run")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "release_setting"))
    p.add_argument("--report", action="store_true", help="only reprint --out/results.json")
    args = p.parse_args(argv)
    out_json = os.path.join(args.out, "results.json")
    if args.report:
        if not os.path.isfile(out_json):
            p.error(f"--report: no {out_json} yet; run python bench/release_setting.py --backend "
                    "torch first (about 40 minutes on 2 cores) and commit its results.json")
        with open(out_json) as f:
            print_table(json.load(f))
        return
    kind, _, folder = args.data.partition(":")
    if kind == "idx" and not os.path.isfile(os.path.join(folder, "train-images-idx3-ubyte.gz")):
        p.error(f"no Fashion-MNIST IDX files in {folder}: apt-get install -y dataset-fashion-mnist "
                "or pass --data default")
    os.makedirs(args.out, exist_ok=True)
    work = os.path.join(args.out, "pretrain")
    pretrain_data = (f"idx:{os.path.join(folder, 'train-images-idx3-ubyte.gz')}"
                     if kind == "idx" else "default")
    cmd = ["recipes/pretrain.py", "--backend", args.backend, "--preset", PRESET,
           "--data", pretrain_data, "--epochs", str(args.epochs), "--seed", str(args.seed),
           "--output", work, "--no-resume", "--view-grid-every", str(args.epochs),
           *args.extra.split()]
    if args.steps_per_epoch:
        cmd += ["--steps-per-epoch", str(args.steps_per_epoch)]
    _, pretrain_s = pretrain(cmd, os.path.join(args.out, "pretrain.log"))
    with open(os.path.join(work, "log.csv")) as f:
        log = list(csv.DictReader(f))
    with open(os.path.join(work, "config.json")) as f:
        config = json.load(f)
    rows = {}
    for name in ("teacher_encoder", "student_encoder"):
        rows[name] = probe(args, ["--encoder", os.path.join(work, f"{name}.keras")],
                           os.path.join(args.out, f"probe_{name}.log"))
    rows["random_init"] = probe(args, ["--from-scratch", "--preset", PRESET],
                                os.path.join(args.out, "probe_random_init.log"))
    report = {
        "command": " ".join(["python", "bench/release_setting.py",
                             *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(args.backend),
        "data": args.data, "epochs": args.epochs, "probe_epochs": args.probe_epochs,
        "probe_weight_decay": args.probe_weight_decay,
        "recipe": {k: config[k] for k in config["recipe_sources"]},
        "pretrain_s": round(pretrain_s, 1),
        "lookup_by_epoch": [round(100 * float(r["lookup_accuracy"]), 2) for r in log],
        "probes": rows,
    }
    write_text_atomic(out_json, json.dumps(report, indent=2))
    print_table(report)


def print_table(report):
    rows = report["probes"]
    print(f"\nrelease setting ({PRESET}), {report['epochs']} epochs of {report['data']}, "
          f"{report['machine']}, pre-training {report['pretrain_s'] / 60:.0f} min")
    print(f"{'encoder':<16} {'kNN':>6} {'linear':>7}")
    for name, label in (("teacher_encoder", "teacher"), ("student_encoder", "student"),
                        ("random_init", "random init")):
        print(f"{label:<16} {rows[name]['knn']:>6.2f} {rows[name]['linear']:>7.2f}")
    gain = rows["teacher_encoder"]["knn"] - rows["random_init"]["knn"]
    print(f"teacher kNN gain over random init: {gain:+.2f}")
    print("lookup accuracy by epoch (%): "
          + " / ".join(f"{a:.2f}" for a in report["lookup_by_epoch"])
          + f"  (chance {100 / 64:.2f})")


if __name__ == "__main__":
    main()
