"""Fine-tuning ablations: the same cells fine-tuned with and without one
recipe change, over several seeds, from a pre-trained encoder and from
scratch. A measurement of one change, not the benchmark (bench/fashion_mnist.py).

    python bench/finetune_sweep.py --backend torch --cells 10/15,100/15 --seeds 0,1,2
    python bench/finetune_sweep.py --backend torch --cells all/1 --seeds 0 --resume
    python bench/finetune_sweep.py --report

Every run is `recipes/finetune.py` with the arm's flags on top of the
cell's (`--labels-per-class N` unless N is "all", `--epochs F`, `--seed S`);
`--seed` draws the labelled subset as well as the weights' and augmentations'
randomness. Rows: `conmim` fine-tunes --encoder (default: the shipped
backbone, the EMA teacher of bench/fashion_mnist.py's E = 6 run), `pixel`
fine-tunes --pixel-encoder (the pixel-regression (SimMIM) baseline's student:
`recipes/pretrain.py --objective pixel`), `scratch` trains the same
classifier from random init with its own recipe. Each run's
test top-1 goes into --out/results.json as it finishes; the table prints the
mean over the seeds run and every seed's value. Nothing is typed in.
"""

import argparse
import hashlib
import json
import os
import shlex

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from keras_conmim.runs import cli
from driver import machine, run_for_results, write_text_atomic  # noqa: E402

ARMS = {
    # name: recipes/finetune.py flags (explicit, so that an arm means the same
    # when a preset's recipe changes)
    "geometry": "--crop auto --crop-padding 4 --crop-scale-min 0.08 --flip 0.5 --pooling mean",
    "no_geometry": "--crop none --flip 0 --pooling mean",
    "flatten": "--crop none --flip 0 --pooling flatten",
    "flatten_small_head": "--crop none --flip 0 --pooling flatten --head-init small",
    # LP-FT with a gentler encoder update: the head starts as the frozen
    # probe, the encoder moves at a lower rate (few labels: fine-tuning at the
    # full rate ended below the probe it started from)
    "flatten_probe_head_ld065": "--crop none --flip 0 --pooling flatten --head-init probe "
                                "--layer-decay 0.65",
    "flatten_probe_head_lr1e-4": "--crop none --flip 0 --pooling flatten --head-init probe "
                                 "--lr 1e-4",
    # the mean-pooled features (which pre-training lifts far above random
    # init) beside the flattened ones (which it does not)
    "mean_flatten": "--crop none --flip 0 --pooling mean+flatten",
    # the flatten head with crop and flip left to the budget ramp started at
    # 1,000 steps (partly on from F = 5 with all labels): the Fashion-MNIST
    # presets' recipe as recipes/finetune.py ran it by default before the
    # F = 5 cells below moved the ramp's start to 5,000 (its committed runs
    # ran as `--pooling flatten` then)
    "flatten_ramp": "--pooling flatten --ramp-start-steps 1000",
    # the flatten head with every regulariser the ramp scales held off (what
    # F = 1 with all labels gets, 937 steps being under the ramp's start), at
    # any length: flatten_ramp at F = 5 ended below F = 1 for both rows (and
    # what F = 5 gets by default since)
    "flatten_plain": "--crop none --flip 0 --pooling flatten --mixup 0 --cutmix 0 "
                     "--randaugment-ops 0 --drop-path 0",
    # the flatten head with every ramped regulariser (crop and flip included)
    # left to the ramp started at 5,000 steps: the Fashion-MNIST presets'
    # recipe as recipes/finetune.py runs it by default since the F = 5 cells
    # (nothing ramped up to 5,000 steps: F = 5 with all labels runs as
    # flatten_plain; F = 15, 14,055 steps, gets 0.60 of each value)
    "flatten_ramp5k": "--pooling flatten --ramp-start-steps 5000",
    # few labels fitted for longer: the flatten arm with at least 1,000
    # optimizer steps instead of the recipe's 300 (MIN_STEPS, not measured
    # against another value before); every cell of it stays under the ramp's
    # start, so nothing else changes
    "flatten_steps1000": "--crop none --flip 0 --pooling flatten --min-steps 1000",
}
ROWS = ("conmim", "pixel", "scratch")
PIXEL_ENCODER = os.path.join(ROOT, "bench", "results", "pixel_e6", "pretrain",
                             "student_encoder.keras")


def parse_cells(text):
    """"10/15,all/1" -> [("10", 15), ("all", 1)]: labels per class / epochs."""
    cells = []
    for item in text.split(","):
        labels, _, epochs = item.partition("/")
        if not (labels == "all" or labels.isdigit()) or not epochs.isdigit() or int(epochs) < 1:
            raise ValueError(f"cell {item!r}: LABELS/EPOCHS with LABELS a count or 'all', "
                             "e.g. 10/15 or all/1")
        cells.append((labels, int(epochs)))
    return cells


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def key(row, arm, cell, seed):
    return f"{row}|{arm}|{cell[0]}/{cell[1]}|{seed}"


def print_table(report):
    results = report["results"]
    cells = sorted({tuple(k.split("|")[2].split("/")) for k in results},
                   key=lambda c: (c[0] == "all", int(c[0]) if c[0] != "all" else 0, int(c[1])))
    print(f"fine-tune top-1 % ({report['machine']}); encoder {report['encoder']}"
          + (f", pixel row {report['pixel_encoder']}" if "pixel_encoder" in report else ""))
    print("cell = labels per class / fine-tuning epochs; mean over seeds [each seed]")
    rows_arms = sorted({tuple(k.split("|")[:2]) for k in results},
                       key=lambda ra: (ROWS.index(ra[0]) if ra[0] in ROWS else 9, ra[1]))
    width = max(len(arm) for _, arm in rows_arms) + 2
    print(f"{'row':<9}{'arm':<{width}}" + "".join(f"{c[0] + '/' + c[1]:>30}" for c in cells))
    for row, arm in rows_arms:
        line = f"{row:<9}{arm:<{width}}"
        for c in cells:
            found = sorted((int(k.split("|")[3]), v) for k, v in results.items()
                           if k.startswith(f"{row}|{arm}|{c[0]}/{c[1]}|"))
            if not found:
                line += f"{'-':>30}"
                continue
            values = [v for _, v in found]
            each = " ".join(f"{v:.2f}" for v in values)
            line += f"{sum(values) / len(values):>12.2f} [{each}]".rjust(30)
        print(line)
    print("arms: " + "; ".join(f"{a} = `{f}`" for a, f in report["arms"].items()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_backend(p, default="torch")
    p.add_argument("--data", default="idx:/usr/share/datasets/fashion-mnist")
    p.add_argument("--encoder", default=os.path.join(
        ROOT, "keras_conmim", "weights", "conmim_vit_mini_p4_28_fmnist.keras"))
    p.add_argument("--pixel-encoder", default=PIXEL_ENCODER,
                   help="the pixel row's encoder (made by the command in README)")
    p.add_argument("--rows", default="conmim,scratch", help=f"from: {', '.join(ROWS)}")
    p.add_argument("--arms", default=",".join(ARMS), help=f"from: {', '.join(ARMS)}")
    p.add_argument("--cells", default="10/15,100/15", help="LABELS/EPOCHS,... (LABELS: N or all)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "finetune_sweep"))
    p.add_argument("--resume", action="store_true", help="keep the runs results.json has")
    p.add_argument("--report", action="store_true", help="only print the table")
    p.add_argument("--quick", action="store_true", help="2 steps per epoch: a smoke test")
    args = p.parse_args(argv)
    path = os.path.join(args.out, "results.json")
    if args.report:
        with open(path) as f:
            print_table(json.load(f))
        return
    rows, arms = args.rows.split(","), args.arms.split(",")
    for name, asked, valid in (("rows", rows, ROWS), ("arms", arms, ARMS)):
        unknown = [x for x in asked if x not in valid]
        if unknown:
            p.error(f"--{name} {unknown}: choose from {', '.join(valid)}")
    try:
        cells = parse_cells(args.cells)
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError as e:
        p.error(str(e))
    os.makedirs(args.out, exist_ok=True)
    report = {"machine": machine(args.backend),
              "encoder": os.path.relpath(args.encoder, ROOT), "data": args.data,
              "quick": args.quick, "arms": {}, "results": {}, "commands": {}}
    if "pixel" in rows:
        report["pixel_encoder"] = os.path.relpath(args.pixel_encoder, ROOT)
    if "conmim" in rows and os.path.isfile(args.encoder):
        # the file's contents, not only its name: a reshipped backbone keeps its path
        report["encoder_sha256"] = file_sha256(args.encoder)
    if os.path.isfile(path) and args.resume:
        with open(path) as f:
            old = json.load(f)
        compared = [k for k in ("machine", "encoder", "data", "quick", "pixel_encoder",
                                "encoder_sha256")
                    if k in old and k in report]  # the pixel encoder once both name one
        mismatch = [k for k in compared if old[k] != report[k]]
        if mismatch:
            p.error(f"--resume: {path} was made with other {', '.join(mismatch)}"
                    + (" (the encoder file at that path has other contents: reshipped?)"
                       if mismatch == ["encoder_sha256"] else "")
                    + "; pass another --out, or the encoder it was made with")
        report = {**report, **old}  # keeps this run's encoder_sha256 where old has none
    encoders = {"conmim": args.encoder, "pixel": args.pixel_encoder}
    missing = [f"{r}: {encoders[r]}" for r in rows
               if r in encoders and not os.path.isfile(encoders[r])]
    if missing:
        p.error(f"encoder file not found ({'; '.join(missing)}): pre-train it first (README) "
                "or pass --encoder / --pixel-encoder")
    report["arms"].update({a: ARMS[a] for a in arms})
    for seed in seeds:
        for cell in cells:
            for row in rows:
                for arm in arms:
                    k = key(row, arm, cell, seed)
                    if k in report["results"]:
                        continue
                    start = (["--from-scratch", "--preset", "vit_mini_p4_28"] if row == "scratch"
                             else ["--encoder", encoders[row]])
                    labels = [] if cell[0] == "all" else ["--labels-per-class", cell[0]]
                    quick = ["--steps-per-epoch", "2", "--min-steps", "0"] if args.quick else []
                    work = os.path.join(args.out, k.replace("|", "_").replace("/", "-"))
                    cmd = ["recipes/finetune.py", "--backend", args.backend, "--data", args.data,
                           *start, *labels, "--epochs", str(cell[1]), "--seed", str(seed),
                           *quick, *shlex.split(ARMS[arm]), "--output", work,
                           "--no-resume"]
                    result, seconds = run_for_results(cmd, work + ".log")
                    report["results"][k] = result["top1"]
                    report["commands"][k] = " ".join(["python", *cmd])
                    print(f"{k}: {report['results'][k]:.2f}% ({seconds:.0f} s)", flush=True)
                    if os.path.exists(os.path.join(work, "classifier.keras")):
                        os.remove(os.path.join(work, "classifier.keras"))  # the number is kept
                    write_text_atomic(path, json.dumps(report, indent=2))
    write_text_atomic(path, json.dumps(report, indent=2))  # a resume that ran nothing
    # still records what it checked (encoder_sha256 on a file made before it)
    print_table(report)


if __name__ == "__main__":
    main()
