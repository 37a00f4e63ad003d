"""Fashion-MNIST benchmark: what does ConMIM pre-training buy, against
training from scratch, the pixel-regression baseline, random init and the raw
pixels, with all labels and with few?

    apt-get install -y dataset-fashion-mnist
    python bench/fashion_mnist.py --backend torch --pretrain-epochs 6 --finetune-epochs 1,5,15
    python bench/fashion_mnist.py ... --resume        # a stopped run continues (a cell from its last epoch)
    python bench/fashion_mnist.py ... --resume --redo F=15/10,probes   # again, in every row
    python bench/fashion_mnist.py --data default --quick                     # smoke test, minutes

Every row uses the same encoder preset (vit_mini_p4_28) and seed.
Pre-trained rows pre-train E epochs with recipes/pretrain.py (the preset's
recipe) and fine-tune with the preset's fine-tuning recipe; the scratch rows
train the same classifier from random init with the preset's own from-scratch
recipe (no layer decay). Both recipes are scaled to each run's length and
label count by recipes/finetune.py (keras_conmim.downstream.finetune_budget).
Fine-tuning cells: every F of --finetune-epochs with all labels, and every
count of --labels-per-class at the largest F (few-label runs take at least
300 steps, finetune_budget.MIN_STEPS). Frozen probes (recipes/linear_probe.py,
linear + kNN) at every label count: the encoder a row fine-tunes from, the
student too for teacher rows (S-linear, S-kNN), random init, and the raw
pixels. Writes `results.json` (after every cell) and `results.png` into
--out and prints the tables; nothing in them is typed in.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from keras_conmim.runs import cli
from driver import machine, pretrain, run_for_results, write_text_atomic  # noqa: E402,F401
from keras_conmim.runs.cli import parse_label_counts  # noqa: E402
PRETRAINED = {
    # row: (pretrain flags, encoder to fine-tune and probe)
    "conmim": ([], "teacher_encoder"),
    "pixel": (["--objective", "pixel"], "student_encoder"),
    "no_momentum": (["--base-momentum", "0", "--final-momentum", "0"], "teacher_encoder"),
    "symmetric_views": (["--symmetric-views"], "teacher_encoder"),
    "absolute_position": (["--position-embedding", "absolute"], "teacher_encoder"),
}
LABELS = {
    "conmim": "ConMIM E + fine-tune",
    "pixel": "pixel regression (SimMIM) E + fine-tune",
    "no_momentum": "ConMIM, no momentum teacher",
    "symmetric_views": "ConMIM, symmetric views",
    "absolute_position": "ConMIM, absolute positions",
    "scratch": "from scratch (own recipe)",
    "scratch_ef": "from scratch, E + F epochs",
    "random_init": "random init, frozen probes only",
    "raw_pixels": "raw pixels, probes only",
}
DEFAULT_ROWS = "conmim,pixel,scratch,random_init,raw_pixels"
PROBE_ONLY = ("random_init", "raw_pixels")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_backend(p, default="jax")
    p.add_argument("--data", default="idx:/usr/share/datasets/fashion-mnist",
                   help="idx:DIR with the four Fashion-MNIST files, or default (packaged slice)")
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--finetune-epochs", default="1,5,15",
                   help="comma-separated fine-tuning lengths F (all labels at each)")
    p.add_argument("--labels-per-class", default="10,100,all",
                   help="label counts (fine-tuned at the largest F, probed at each)")
    p.add_argument("--batch-size", type=int, default=128, help="pre-training batch")
    p.add_argument("--probe-epochs", type=int, default=30)
    p.add_argument("--rows", default=DEFAULT_ROWS, help=f"subset of {','.join(LABELS)}")
    p.add_argument("--quick", action="store_true", help="2 steps per epoch: a smoke test")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "fashion_mnist"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true",
                   help="keep the cells --out/results.json already has (same settings), run "
                   "only the missing ones, and let pre-training continue from its checkpoints")
    p.add_argument("--redo", default="",
                   help="with --resume: fine-tuning cells to run again in every row asked for, "
                   "e.g. F=15/10,F=15/100 after a change to the few-label recipe; 'probes': "
                   "the frozen probes again")
    p.add_argument("--report", action="store_true",
                   help="only print the tables and redraw the plot from --out/results.json")
    p.add_argument("--finetune-flags", default="",
                   help="extra recipes/finetune.py flags for every fine-tuning run")
    args = p.parse_args(argv)
    args.command = " ".join(["bench/fashion_mnist.py", *(sys.argv[1:] if argv is None else argv)])
    if args.report:
        with open(os.path.join(args.out, "results.json")) as fh:
            report = json.load(fh)
        print_table(report)
        plot(report, os.path.join(args.out, "results.png"))
        return
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in LABELS]
    if unknown:
        p.error(f"unknown rows {unknown}; valid: {', '.join(LABELS)}")
    try:
        f_list = [int(x) for x in args.finetune_epochs.split(",")]
        if min(f_list) < 1:
            raise ValueError
    except ValueError:
        p.error(f"--finetune-epochs {args.finetune_epochs!r}: positive integers, e.g. 1,5,15")
    try:
        counts = parse_label_counts(args.labels_per_class)
    except ValueError as e:
        p.error(f"--labels-per-class {args.labels_per_class!r}: {e}")
    kind, _, folder = args.data.partition(":")
    if kind == "idx" and not os.path.isfile(os.path.join(folder, "train-images-idx3-ubyte.gz")):
        p.error(f"no Fashion-MNIST IDX files in {folder}: apt-get install -y dataset-fashion-mnist "
                "or pass --data default")
    e = args.pretrain_epochs
    os.makedirs(args.out, exist_ok=True)
    common = ["--backend", args.backend, "--seed", str(args.seed)]
    quick = ["--steps-per-epoch", "2"] if args.quick else []
    pretrain_data = (os.path.join(folder, "train-images-idx3-ubyte.gz") if kind == "idx" else None)
    probe_epochs = "3" if args.quick else str(args.probe_epochs)
    # Short schedules: warm up over a fifth of the run, at most half an epoch.
    pretrain_warmup = ["--warmup-epochs", str(min(0.5, e / 5))]
    labels_flag = ",".join("all" if c is None else str(c) for c in counts)
    cells = [(f, "all") for f in f_list] + [(max(f_list), str(c)) for c in counts if c is not None]

    settings = {"machine": machine(args.backend), "data": args.data, "E": e, "F": f_list,
                "labels_per_class": labels_flag, "batch_size": args.batch_size,
                "probe_epochs": int(probe_epochs), "quick": args.quick,
                "finetune_flags": args.finetune_flags}
    done = {}
    previous = os.path.join(args.out, "results.json")
    if args.resume and os.path.isfile(previous):
        with open(previous) as fh:
            old = json.load(fh)
        same = {k: old.get(k) for k in settings}
        if same != settings:
            p.error(f"--resume: {previous} was made with other settings {same}; these are "
                    f"{settings}")
        done = {r["row"]: r for r in old["rows"]}
    redo = [c for c in args.redo.split(",") if c]
    unknown = sorted(set(redo) - {f"F={f}/{n}" for f, n in cells} - {"probes"})
    if unknown:
        p.error(f"--redo {unknown}: not cells of this run; its cells are "
                f"{', '.join(f'F={f}/{n}' for f, n in cells)} and probes")
    if redo and not args.resume:
        p.error("--redo needs --resume (without it every cell runs anyway)")
    for row in rows:
        for key in redo:
            if row in done and key == "probes":
                done[row]["probes"] = {}
            if row in done:
                done[row]["finetune"].pop(key, None)
                done[row]["wall_clock_s"].pop(key, None)
    results = dict(done)  # rows not asked for this time stay in the report

    def save():
        write_report(args, settings, rows, results, cells)

    starts = {}  # row -> recipes/finetune.py flags naming its starting point

    for row in rows:
        entry = done.get(row) or {"row": row, "label": LABELS[row], "pretrain_epochs": 0,
                                  "finetune": {}, "probes": {}, "wall_clock_s": {}}
        results[row] = entry
        work = os.path.join(args.out, row)
        os.makedirs(work, exist_ok=True)
        if row in PROBE_ONLY:
            if not entry["probes"]:
                flags = (["--raw-pixels"] if row == "raw_pixels" else
                         ["--from-scratch", "--preset", "vit_mini_p4_28"])
                entry["probes"], entry["wall_clock_s"]["probes"] = frozen_probe(
                    args, probe_epochs, labels_flag, work, flags)
                save()
            print(f"{row}: {entry['probes']}", flush=True)
            continue
        if row in PRETRAINED:
            flags, encoder_name = PRETRAINED[row]
            pretrain_dir = os.path.join(work, "pretrain")
            encoder = os.path.join(pretrain_dir, f"{encoder_name}.keras")
            if "pretrain" not in entry["wall_clock_s"]:
                cmd = ["recipes/pretrain.py", *common, "--batch-size", str(args.batch_size),
                       *quick, *flags, *pretrain_warmup, "--epochs", str(e),
                       "--output", pretrain_dir, "--view-grid-every", str(max(e, 1)),
                       *([] if args.resume else ["--no-resume"])]
                if pretrain_data:
                    cmd += ["--data", f"idx:{pretrain_data}"]
                _, entry["wall_clock_s"]["pretrain"] = pretrain(cmd, os.path.join(work, "pretrain.log"))
                entry["pretrain_epochs"] = e
                save()
            if not entry["probes"]:
                probes, entry["wall_clock_s"]["probes"] = frozen_probe(
                    args, probe_epochs, labels_flag, work, ["--encoder", encoder])
                if encoder_name == "teacher_encoder":  # the student too: on short runs it leads
                    student, _ = frozen_probe(
                        args, probe_epochs, labels_flag, work,
                        ["--encoder", os.path.join(pretrain_dir, "student_encoder.keras")])
                    for n, values in student.items():
                        probes[n].update(student_linear=values["linear"], student_knn=values["knn"])
                entry["probes"] = probes
                save()
            starts[row] = ["--encoder", encoder]
        else:
            starts[row] = ["--from-scratch", "--preset", "vit_mini_p4_28"]

    # Fine-tuning, cheapest cells first and each cell across the rows, so a
    # run stopped early still holds whole columns: few labels, then F ascending.
    for f, labels in sorted(cells, key=lambda c: (c[1] == "all", c[0])):
        for row, start in starts.items():
            entry = results[row]
            if row == "scratch_ef" and labels != "all":
                continue  # the equal-compute row: all labels only
            epochs = f + e if row == "scratch_ef" else f
            key = f"F={epochs}/{labels}"
            if key in entry["finetune"]:
                continue
            work = os.path.join(args.out, row)
            log = os.path.join(work, f"finetune_F{epochs}_{labels}.log")
            result, seconds = run_for_results(
                ["recipes/finetune.py", *common, *quick,
                 *(["--min-steps", "0"] if args.quick else []), *start,
                 *args.finetune_flags.split(), "--data", args.data, "--epochs", str(epochs),
                 *([] if labels == "all" else ["--labels-per-class", labels]),
                 # each cell's run folder: a cell stopped mid-run continues from its last epoch
                 "--output", log[:-len(".log")],
                 *([] if args.resume else ["--no-resume"])], log)
            entry["finetune"][key] = {"epochs": epochs, "labels": labels, "top1": result["top1"],
                                      "recipe": result["recipe"],
                                      "recipe_sources": result["recipe_sources"],
                                      "head": result["head"]}
            if result["resumed_after_epoch"]:  # wall_clock_s then counts the resumed part only
                entry["finetune"][key]["resumed_after_epoch"] = result["resumed_after_epoch"]
            entry["wall_clock_s"][key] = round(seconds, 1)
            save()
            print(f"{row} {key}: {entry['finetune'][key]['top1']:.2f}", flush=True)

    with open(previous) as fh:
        report = json.load(fh)
    print_table(report)
    plot(report, os.path.join(args.out, "results.png"))


def frozen_probe(args, probe_epochs, labels_flag, work, flags):
    """recipes/linear_probe.py at every label count: ({labels: {linear, knn}}, seconds)."""
    result, seconds = run_for_results(
        ["recipes/linear_probe.py", "--backend", args.backend, *flags, "--data", args.data,
         "--probe-epochs", probe_epochs, "--labels-per-class", labels_flag,
         "--seed", str(args.seed)], os.path.join(work, "probe.log"))
    return result["results"], round(seconds, 1)


def write_report(args, settings, rows, results, cells):
    """results.json, written after every cell so a stopped run keeps what it measured."""
    complete = all(
        (r["probes"] if r["row"] in PROBE_ONLY else
         all(f"F={f + (settings['E'] if r['row'] == 'scratch_ef' else 0)}/{n}"
             in r["finetune"] for f, n in cells if r["row"] != "scratch_ef" or n == "all"))
        for r in results.values()) and set(rows) <= set(results)
    report = {**settings, "command": args.command, "complete": complete,
              "rows": list(results.values())}
    write_text_atomic(os.path.join(args.out, "results.json"), json.dumps(report, indent=2))


def print_table(report):
    rows = report["rows"]
    f_list = report["F"]
    counts = report["labels_per_class"].split(",")
    few = [n for n in counts if n != "all"]
    print(f"\nFashion-MNIST, vit_mini_p4_28, E={report['E']} pre-training epochs "
          f"(batch {report['batch_size']}), {report['machine']}")
    print("\nFine-tune top-1 % on the 10,000 test images: all labels at F epochs; "
          f"N labels per class at F={max(f_list)} (at least 300 steps)")
    head = [f"F={f}" for f in f_list] + [f"{n}/class" for n in few]
    print(f"{'row':<40}" + "".join(f"{h:>10}" for h in head))
    for r in rows:
        if r["row"] in PROBE_ONLY:
            continue
        extra = report["E"] if r["row"] == "scratch_ef" else 0
        keys = [f"F={f + extra}/all" for f in f_list] + [f"F={max(f_list)}/{n}" for n in few]
        cells = [f"{r['finetune'][k]['top1']:.2f}" if k in r["finetune"] else "-" for k in keys]
        print(f"{r['label']:<40}" + "".join(f"{c:>10}" for c in cells))
    print("\nFrozen features, top-1 % by labels per class (linear probe / kNN k=20; "
          "S- = the student of a teacher row)")
    print(f"{'row':<40}" + "".join(f"{n + (' /class' if n != 'all' else ''):>18}" for n in counts))
    for r in rows:
        for prefix, name in (("", r["label"]), ("student_", "  S- (student)")):
            if not any(f"{prefix}linear" in v for v in r["probes"].values()):
                continue
            cells = []
            for n in counts:
                v = r["probes"].get(n, {})
                cells.append(f"{v[prefix + 'linear']:.2f} / {v[prefix + 'knn']:.2f}"
                             if prefix + "linear" in v else "-")
            print(f"{name:<40}" + "".join(f"{c:>18}" for c in cells))
    total = sum(sum(r["wall_clock_s"].values()) for r in rows)
    print(f"\nwall-clock, all cells: {total / 60:.0f} min")
    if not report.get("complete", True):
        print("(stopped: the cells above are all that ran; --resume continues)")


def plot(report, path):
    """Grouped bars of fine-tune top-1 per F (all labels), drawn with PIL."""
    from PIL import Image, ImageDraw

    rows = [r for r in report["rows"] if r["finetune"]]
    f_list = report["F"]
    width, bar_h, left = 760, 16, 300
    colors = [(70, 110, 190), (220, 140, 50), (90, 160, 90), (160, 80, 160)]
    group = bar_h * len(f_list) + 10
    img = Image.new("RGB", (width, 50 + group * max(1, len(rows))), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 10), "Fashion-MNIST fine-tune top-1 (%), all labels; bars: "
              + ", ".join(f"F={f}" for f in f_list), fill="black")
    for i, r in enumerate(rows):
        y0 = 35 + i * group
        draw.text((10, y0 + 4), r["label"], fill="black")
        extra = report["E"] if r["row"] == "scratch_ef" else 0
        for j, f in enumerate(f_list):
            cell = r["finetune"].get(f"F={f + extra}/all")
            if cell is None:
                continue
            y = y0 + j * bar_h
            length = int((width - left - 60) * cell["top1"] / 100)
            draw.rectangle([left, y + 2, left + length, y + bar_h - 2], fill=colors[j % 4])
            draw.text((left + length + 6, y + 2), f"{cell['top1']:.2f}", fill="black")
    img.save(path)


if __name__ == "__main__":
    main()
