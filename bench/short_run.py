"""Short pre-training runs of recipes/pretrain.py that differ in named flags,
judged by the masked-patch lookup accuracy per epoch (the objective's own
read-out; chance = 1 / patches). The evidence behind the small presets'
recipe: what makes a run of a few minutes learn.

    python bench/short_run.py --backend torch --epochs 4
    python bench/short_run.py --variants release,sincos --epochs 2 --data default

Every variant runs the preset's recipe (recipes/pretrain.py, same seed, data
order and step budget) with the flags its entry adds; `release` switches
every remedy off (the release's layout and numbers). Prints one table and
writes --out/short_run.json after every row.
"""

import argparse
import csv
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from driver import machine, pretrain, run_for_results, write_text_atomic  # noqa: E402
from keras_conmim.runs.cli import linear_probe_weight_decay as probe_weight_decay  # noqa: E402
# The release's layout and numbers, with the small-image views and crop.
RELEASE = ["--mask-token-position", "none", "--mask-unit", "2", "--mask-ratio", "0.75",
           "--lr", "5e-4", "--warmup-epochs", "0.5", "--batch-size", "64",
           "--base-momentum", "0.996", "--final-momentum", "1.0", "--temperature", "0.1",
           "--crop-scale-min", "0.35"]
SINCOS = [*RELEASE, "--mask-token-position", "sincos"]
# name: flags on top of the preset's recipe
VARIANTS = {
    "preset": [],
    "release": RELEASE,
    "sincos": SINCOS,
    "unit1": [*RELEASE, "--mask-unit", "1"],
    "lr_1.5e-3": [*RELEASE, "--lr", "1.5e-3"],
    "sincos_unit1": [*SINCOS, "--mask-unit", "1"],
    "sincos_lr_1.5e-3": [*SINCOS, "--lr", "1.5e-3"],
    "sincos_unit1_lr_1.5e-3": [*SINCOS, "--mask-unit", "1", "--lr", "1.5e-3"],
    "sincos_unit1_momentum_0.99": [*SINCOS, "--mask-unit", "1", "--base-momentum", "0.99"],
    "sincos_unit1_ratio_0.5": [*SINCOS, "--mask-unit", "1", "--mask-ratio", "0.5"],
    "sincos_unit1_batch_32": [*SINCOS, "--mask-unit", "1", "--batch-size", "32"],
    "sincos_unit1_crop_0.6": [*SINCOS, "--mask-unit", "1", "--crop-scale-min", "0.6"],
    "sincos_unit1_crop_0.6_batch_32": [*SINCOS, "--mask-unit", "1", "--crop-scale-min", "0.6",
                                       "--batch-size", "32"],
    "sincos_unit1_crop_0.8_batch_32": [*SINCOS, "--mask-unit", "1", "--crop-scale-min", "0.8",
                                       "--batch-size", "32"],
    "sincos_unit1_crop_1.0_batch_32": [*SINCOS, "--mask-unit", "1", "--crop-scale-min", "1.0",
                                       "--batch-size", "32"],
    "sincos_unit1_crop_0.8_batch_32_momentum_0.99": [
        *SINCOS, "--mask-unit", "1", "--crop-scale-min", "0.8", "--batch-size", "32",
        "--base-momentum", "0.99"],
    "sincos_unit1_crop_1.0_batch_32_momentum_0.99": [
        *SINCOS, "--mask-unit", "1", "--crop-scale-min", "1.0", "--batch-size", "32",
        "--base-momentum", "0.99"],
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("jax", "tensorflow", "torch"),
                   default=os.environ.get("KERAS_BACKEND", "jax"))
    p.add_argument("--preset", default="vit_mini_p4_28")
    p.add_argument("--data", default="default")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--variants", default="preset,release,sincos,unit1,lr_1.5e-3",
                   help=f"comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--extra", default="", help="flags added to every variant")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "short_run"))
    p.add_argument("--resume", action="store_true", help="keep rows --out/short_run.json has")
    p.add_argument("--report", action="store_true", help="only reprint --out/short_run.json")
    p.add_argument("--probe", action="store_true",
                   help="also kNN / linear probe (recipes/linear_probe.py, --data's test split) "
                   "of each run's teacher and student")
    p.add_argument("--probe-weight-decay", type=probe_weight_decay, default="auto",
                   help="recipes/linear_probe.py's --probe-weight-decay (auto: cross-validated "
                   "with at most 1,000 labels per class)")
    args = p.parse_args(argv)
    out_json = os.path.join(args.out, "short_run.json")
    if args.report:
        with open(out_json) as f:
            print_table(json.load(f))
        return
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    os.makedirs(args.out, exist_ok=True)
    settings = {"machine": machine(args.backend), "preset": args.preset, "data": args.data,
                "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch, "extra": args.extra,
                "probe": args.probe, "probe_weight_decay": args.probe_weight_decay}
    rows = []
    if args.resume and os.path.isfile(out_json):
        with open(out_json) as f:
            old = json.load(f)
        if old["settings"] != settings:
            p.error(f"--resume: {out_json} was made with other settings {old['settings']}")
        rows = [r for r in old["rows"] if r["variant"] in names]
    done = {r["variant"] for r in rows}
    for name in names:
        if name in done:
            continue
        with tempfile.TemporaryDirectory() as work:
            cmd = ["recipes/pretrain.py", "--backend", args.backend,
                   "--preset", args.preset, "--data", args.data, "--epochs", str(args.epochs),
                   "--output", work, "--no-resume", "--view-grid-every", str(args.epochs),
                   *VARIANTS[name], *args.extra.split()]
            if args.steps_per_epoch:
                cmd += ["--steps-per-epoch", str(args.steps_per_epoch)]
            result, seconds = pretrain(cmd, os.path.join(work, "pretrain.log"))
            with open(os.path.join(work, "log.csv")) as f:
                log = list(csv.DictReader(f))
            with open(os.path.join(work, "config.json")) as f:
                config = json.load(f)
            probes = {}
            for name_ in ("teacher", "student") if args.probe else ():
                probes[name_] = _probe(args, os.path.join(work, f"{name_}_encoder.keras"))
        row = {"variant": name, "flags": " ".join(VARIANTS[name] + args.extra.split()),
               "lookup_by_epoch": [round(100 * float(r["lookup_accuracy"]), 2) for r in log],
               "loss_by_epoch": [round(float(r["loss"]), 4) for r in log],
               "chance": round(100 * result["chance"], 2), "seconds": round(seconds, 1),
               "batch_size": config["batch_size"]}
        row["times_chance"] = round(row["lookup_by_epoch"][-1] / row["chance"], 2)
        for name_, (knn, linear) in probes.items():
            row[f"{name_}_knn"], row[f"{name_}_linear"] = knn, linear
        rows.append(row)
        print(json.dumps(row), flush=True)
        write_text_atomic(out_json, json.dumps({"settings": settings, "command": " ".join(
            ["python", "bench/short_run.py", *(sys.argv[1:] if argv is None else argv)]),
            "rows": rows}, indent=2))
    with open(out_json) as f:
        print_table(json.load(f))


def print_table(report):
    settings = report["settings"]
    print(f"\n{settings['preset']}, {settings['epochs']} epochs of {settings['data']}, "
          f"{settings['machine']}")
    print(f"{'variant':<46} {'lookup % by epoch':<26} {'x chance':>8} {'seconds':>7}"
          + ("  T kNN / lin   S kNN / lin" if settings.get("probe") else ""))
    for r in report["rows"]:
        probes = (f"  {r['teacher_knn']:5.2f} / {r['teacher_linear']:5.2f}"
                  f"  {r['student_knn']:5.2f} / {r['student_linear']:5.2f}"
                  if "teacher_knn" in r else "")
        print(f"{r['variant']:<46} {' '.join(f'{a:.2f}' for a in r['lookup_by_epoch']):<26} "
              f"{r['times_chance']:>8.2f} {r['seconds']:>7.0f}" + probes)


def _probe(args, encoder):
    """(kNN, linear) top-1 % of a saved encoder's frozen features."""
    result, _ = run_for_results(
        ["recipes/linear_probe.py", "--backend", args.backend, "--encoder", encoder,
         "--data", args.data, "--probe-epochs", "30",
         "--probe-weight-decay", str(args.probe_weight_decay)], encoder + ".probe.log")
    (only,) = result["results"].values()
    return only["knn"], only["linear"]


if __name__ == "__main__":
    main()
