"""The result tables of docs/, printed from committed result files.

    python bench/doc_tables.py                  # every table, as markdown
    python bench/doc_tables.py release_gap      # one of them
    python bench/doc_tables.py --check          # docs/ hold exactly these (the tests run it)

In a doc, such a table follows a line `<!-- table: NAME -->`; nothing in it is
typed in. Each NAME reads the files named in TABLES (under bench/results/);
the scripts that write them are named beside each table in the docs.
"""

import argparse
import json
import os
import re
import sys

from headline import table as headline_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
DOCS = ("docs/benchmarks.md", "docs/downstream.md", "docs/finetuning.md", "README.md")
MARK = re.compile(r"^<!-- table: (\w+) -->\n((?:\|.*\n)+)", re.M)


def _load(name):
    with open(os.path.join(RESULTS, name)) as f:
        return json.load(f)


def _markdown(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


BACKEND_NAMES = {"jax": "jax (XLA)", "tensorflow": "tensorflow (XLA)", "torch": "torch (eager; SDPA)"}


def attention():
    """bench/step_speed.py --attention both: images/s per backend and path."""
    rows = _load("step_speed_cpu.json")
    speed = {(r["backend"], r["attention"]): r["images_per_s"] for r in rows}
    out = []
    for backend in ("jax", "tensorflow", "torch"):
        fused, manual = speed[(backend, "fused")], speed[(backend, "manual")]
        out.append([BACKEND_NAMES[backend], f"{fused:.1f}", f"{manual:.1f}",
                    f"{fused / manual:.2f}"])
    return _markdown(["backend", "fused (`dot_product_attention`)", "manual", "fused / manual"],
                     out)


def release_gap():
    """bench/step_speed.py --release --repeats 3: median images/s, the median of
    the rounds' ratios to the release and their range."""
    out = []
    for name, label in (("release_gap_mini.json", "`vit_mini_p4_28`, batch 128"),
                        ("release_gap_tiny.json", "`vit_tiny_p4_32`, batch 64")):
        rows = {r["backend"]: r for r in _load(name)}
        cells = [f"{rows['release (plain torch)']['images_per_s']:.1f}"]
        for backend in ("torch", "jax", "tensorflow"):
            r = rows[backend]
            runs = r["vs_release_runs"]
            cells.append(f"{r['images_per_s']:.1f} ({r['vs_release']:.2f}×; "
                         f"{min(runs):.2f}–{max(runs):.2f})")
        out.append([f"{label} (`{name}`)", *cells])
    return _markdown(["config", "release (plain torch)", "torch (eager)", "JAX (XLA)",
                      "TensorFlow (XLA)"], out)


PROFILE_PARTS = (
    ("student encoder, forward", {("student encoder", "forward")}),
    ("student encoder, backward", {("student encoder", "backward")}),
    ("teacher encoder (forward only)", {("teacher encoder", "forward")}),
    ("student head, forward + backward", {("student head", "forward"), ("student head", "backward")}),
    ("teacher head", {("teacher head", "forward")}),
    ("views, masks, loss, optimizer, EMA", {(p, d) for p in ("views", "masking", "loss", "optimizer",
                                                             "EMA update", "other")
                                            for d in ("forward", "backward")}),
)


def profile():
    """bench/profile_step.py --backend jax torch: kernel milliseconds per step and part."""
    by_backend = {r["backend"]: r["rows"] for r in _load("profile_mini.json")}

    def ms(rows, parts, kind):
        return 1000 * sum(r["seconds_per_step"] for r in rows
                          if (r["part"], r["direction"]) in parts and r["kind"] == kind)

    out, total = [], {}
    for label, parts in PROFILE_PARTS:
        row = [label]
        for backend in ("jax", "torch"):
            for kind in ("matmul", "other"):
                value = ms(by_backend[backend], parts, kind)
                total[(backend, kind)] = total.get((backend, kind), 0) + value
                row.append(f"{value:.0f}")
        out.append(row)
    out.append(["**all**"] + [f"**{total[(b, k)]:.0f}**" for b in ("jax", "torch")
                              for k in ("matmul", "other")])
    return _markdown(["part", "JAX matmul", "JAX other", "torch matmul", "torch other"], out)


def precision():
    """bench/step_speed.py --precision float32 / mixed_bfloat16: images/s."""
    rows = _load("precision_cpu_float32.json") + _load("precision_cpu_mixed_bfloat16.json")
    speed = {(r["backend"], r["precision"]): r["images_per_s"] for r in rows}
    out = [[b, f"{speed[(b, 'float32')]:.1f}", f"{speed[(b, 'mixed_bfloat16')]:.1f}",
            f"{speed[(b, 'mixed_bfloat16')] / speed[(b, 'float32')]:.2f}"]
           for b in ("jax", "tensorflow", "torch")]
    return _markdown(["backend", "float32", "mixed_bfloat16", "bf16 / fp32"], out)


def short_run():
    """bench/short_run.py: masked-patch lookup accuracy of short runs."""
    report = _load(os.path.join("short_run", "short_run.json"))
    out = [[f"`{r['variant']}`", " / ".join(f"{a:.2f}" for a in r["lookup_by_epoch"]),
            f"{r['times_chance']:.2f}×", r["batch_size"]] for r in report["rows"]]
    return _markdown(["variant", "lookup accuracy % by epoch", "last / chance", "batch"], out)


def targets():
    """The classification headline's targets, from bench/headline.py's rows."""
    rows = headline_rows(RESULTS)

    def means(name):
        return [None if c in ("-", "") else float(c.split()[0]) for c in rows[name]]

    conmim = means("ConMIM (shipped backbone), fine-tuned")
    scratch = means("from scratch (own recipe)")
    pixel = means("pixel regression (SimMIM), fine-tuned")
    raw = [c for c in rows["raw pixels, linear / kNN (frozen)"]]

    def diff(a, b):
        return "-" if a is None or b is None else f"{a - b:+.2f}"

    raw_cells = []
    for c, value in zip(conmim, raw):
        if not value:
            raw_cells.append("-")
            continue
        linear, knn = (float(v) for v in value.split(" / "))
        raw_cells.append(f"{c - linear:+.2f} / {c - knn:+.2f}")
    out = [["ConMIM − scratch (targets: +5 at 100/class, +1 with all labels)",
            *[diff(a, b) for a, b in zip(conmim, scratch)]],
           ["ConMIM − pixel regression (target: above)", *[diff(a, b) for a, b in zip(conmim, pixel)]],
           ["ConMIM − raw pixels, linear / kNN (target: above)", *raw_cells]]
    return _markdown(["top-1 points", "10/class", "100/class", "all, F=1", "all, F=5", "all, F=15"],
                     out)


def downstream():
    """bench/downstream_benchmark.py: every row with a result."""
    from downstream_benchmark import AP50, METRIC, ROWS, read, row_name

    out = []
    # segmentation, detection, instances; the main heads (DeepLabV3, RetinaNet) first, then
    # by budget, start, seed
    tasks = ("segment", "detect", "instance")
    for row in sorted(ROWS, key=lambda r: (tasks.index(r[0]),
                                           r[1] in ("segformer", "upernet", "yolov8"),
                                           r[1], r[3], list(DOWNSTREAM_STARTS).index(r[2]),
                                           r[4])):
        r = read(row)
        if r is None:
            continue
        task, head, start, canvases, seed, _ = row
        key = METRIC[task]
        out.append([task, head, DOWNSTREAM_STARTS[start], canvases, r["recipe"]["canvas_size"],
                    seed, r["steps"],
                    f"{r['val'][key]:.2f}", f"{r['test'][key]:.2f}",
                    f"{r['test'][AP50[task]]:.2f}" if task in AP50 else "-",
                    f"`{row_name(*row)}`"])
    # No speed column: rows may share the CPU with other work; speed is
    # bench/downstream_speed.py's table, measured alone.
    return _markdown(["task", "head", "start", "train canvases", "canvas px", "seed", "steps",
                      "val", "test", "test AP50", "run folder"], out)


METRIC_NAME = {"segment": "mIoU", "detect": "box mAP", "instance": "mask mAP"}  # each task's score


def _start_scores():
    """{(task, head, canvases, canvas px): {start: [test score per seed run]}}
    from bench/downstream_benchmark.py's committed rows."""
    from downstream_benchmark import METRIC, ROWS, read

    scores = {}
    for row in ROWS:
        r = read(row)
        if r is not None:
            task, head, start, canvases, _, _ = row
            key = (task, head, canvases, r["recipe"]["canvas_size"])
            scores.setdefault(key, {}).setdefault(start, []).append(r["test"][METRIC[task]])
    return scores


def downstream_summary():
    """bench/downstream_benchmark.py, one line per setting: each start's test
    score (seed 0's, or the mean over seeds with their number)."""
    tasks = ("segment", "detect", "instance")
    scores = _start_scores()
    out = []
    for key in sorted(scores, key=lambda k: (tasks.index(k[0]), k[1] in ("segformer", "upernet",
                                                                          "yolov8"), k[1], k[2:])):
        cells = []
        for start in DOWNSTREAM_STARTS:
            got = scores[key].get(start)
            cells.append("-" if not got else f"{sum(got) / len(got):.2f}"
                         + (f" ({len(got)} seeds)" if len(got) > 1 else ""))
        out.append([f"{key[0]} ({METRIC_NAME[key[0]]})", key[1], key[2], key[3], *cells])
    return _markdown(["task (test %)", "head", "train canvases", "canvas px",
                      *DOWNSTREAM_STARTS.values()], out)


DOWNSTREAM_STARTS = {"task": "ConMIM on the task's images",
                     "task_pixel": "pixel regression on the task's images",
                     "pretrained": "ConMIM (shipped backbone)",
                     "pixel": "pixel regression on 28 px items", "random": "same ViT, random init",
                     "resnet18": "ResNet-18 (KerasHub), scratch"}


def downstream_share():
    """bench/downstream_benchmark.py: what pre-training buys, test points of
    one start minus another at the same seed (same canvases): one line per
    pair of starts and setting, the labelled budgets side by side, each cell
    the mean over the seeds both starts have and the per-seed values."""
    from downstream_benchmark import differences

    lines = {}  # (a, b, task, head, px): {canvases: (per seed, mean)}
    for a, b in (("task", "random"), ("task", "task_pixel"), ("task", "pretrained"),
                 ("task", "pixel"), ("task_pixel", "random"), ("pretrained", "random"),
                 ("pretrained", "pixel"), ("pixel", "random")):
        for task, head, canvases, px, per_seed, mean in differences(a, b):
            lines.setdefault((a, b, task, head, px), {})[canvases] = (per_seed, mean)
    budgets = sorted({c for cells in lines.values() for c in cells})

    def cell(per_seed, mean):
        seeds = ", ".join(str(s) for s in per_seed)
        values = ", ".join(f"{d:+.2f}" for d in per_seed.values())
        return (f"{mean:+.2f} (seed {seeds})" if len(per_seed) == 1
                else f"{mean:+.2f} (seeds {seeds}: {values})")

    out = [[f"{DOWNSTREAM_STARTS[a]} − {DOWNSTREAM_STARTS[b]}",
            f"{task} ({head}, {METRIC_NAME[task]})", px,
            *[cell(*cells[c]) if c in cells else "-" for c in budgets]]
           for (a, b, task, head, px), cells in lines.items()]
    return _markdown(["difference", "task", "canvas px",
                      *[f"{c:,} canvases: mean (per seed)" for c in budgets]], out)


def downstream_targets():
    """bench/downstream_benchmark.py: #43's targets for ConMIM pre-trained on
    the task's images, each against the committed rows (means over the seeds
    both starts of a pair have; a start's own mean over its seeds)."""
    from downstream_benchmark import differences

    def spread(per_seed):
        return (f"{len(per_seed)} ({', '.join(f'{d:+.2f}' for d in per_seed.values())})"
                if per_seed else "-")

    def verdict(value, need):
        if value is None:
            return "not run"
        return "met" if value >= need else f"missed by {need - value:.2f}"

    out = []
    for rival, label, need in (("random", "task − random init ≥ +3", 3.0),
                               ("task_pixel", "task − pixel regression on task images ≥ 0",
                                0.0)):
        pairs = {(t, h, c): (p, m) for t, h, c, _, p, m in differences("task", rival)}
        for task, head in (("segment", "deeplabv3"), ("detect", "yolov8")):
            for canvases in (100, 500):
                per_seed, mean = pairs.get((task, head, canvases), ({}, None))
                out.append([f"{label} ({task}, {head}, {canvases} canvases)",
                            "-" if mean is None else f"{mean:+.2f}", spread(per_seed),
                            verdict(mean, need)])

    scores = _start_scores()

    def mean_of(task, head, start, canvases):
        got = [v for key, starts in scores.items() if key[:3] == (task, head, canvases)
               for v in starts.get(start, [])]
        return sum(got) / len(got) if got else None

    vit_box = [m for m in (mean_of("detect", "yolov8", s, 500) for s in ("task", "pretrained"))
               if m is not None]
    resnet_box = mean_of("detect", "yolov8", "resnet18", 500)
    lead = None if not vit_box or resnet_box is None else max(vit_box) - resnet_box
    out.append(["pre-trained ViT − ResNet-18 scratch ≥ 0 (detect, yolov8, 500 canvases)",
                "-" if lead is None else f"{lead:+.2f}", "-", verdict(lead, 0.0)])
    masks = [mean_of("segment", "deeplabv3", start, 500)
             for start in ("resnet18", "pretrained", "task")]
    if None in masks:
        out.append(["mask gap to ResNet-18 ≤ half the shipped backbone's (segment, deeplabv3, "
                    "500 canvases)", "-", "-", "not run"])
    else:
        shipped_gap, task_gap = masks[0] - masks[1], masks[0] - masks[2]
        out.append([f"mask gap to ResNet-18 ≤ half the shipped backbone's ({shipped_gap:.2f} / 2;"
                    " segment, deeplabv3, 500 canvases)", f"{task_gap:.2f}", "-",
                    verdict(shipped_gap / 2 - task_gap, 0.0)])
    return _markdown(["target (test points, mean over seeds)", "measured", "seeds (per seed)",
                      "verdict"], out)


def downstream_speed():
    """bench/downstream_speed.py: images/s before / now and the share of the
    float32 matmul peak."""
    from downstream_speed import table_rows

    r = _load("downstream_speed.json")
    out = [[task, setting, f"{gflop:.2f}",
            *[f"{ips:.1f} ({100 * share:.0f}%)" for _, ips, share in cells]]
           for task, setting, gflop, cells in table_rows(r)]
    return _markdown(["task", "setting", "GFLOP / image (train)",
                      *[f"{b}: img/s (% of fp32 peak)" for b in r["backends"]]], out)


def dense_probe():
    """bench/dense_probe.py: a linear probe on each start's frozen patch tokens,
    scored on validation canvases (#43)."""
    from dense_probe import table

    return table(_load("dense_probe.json")).split("\n\n")[0]


TABLES = {"targets": targets, "short_run": short_run, "attention": attention,
          "release_gap": release_gap, "profile": profile, "precision": precision,
          "downstream": downstream, "downstream_share": downstream_share,
          "downstream_summary": downstream_summary, "downstream_targets": downstream_targets,
          "downstream_speed": downstream_speed, "dense_probe": dense_probe}


def marked_tables(root=ROOT):
    """[(doc, name, table text)] for every `<!-- table: NAME -->` in the docs."""
    found = []
    for doc in DOCS:
        with open(os.path.join(root, doc)) as f:
            text = f.read()
        found += [(doc, m.group(1), m.group(2).rstrip("\n")) for m in MARK.finditer(text)]
    return found


def check(root=ROOT):
    """The problems: a marked table that differs from what its results print,
    an unknown name, a table printed here that no doc shows."""
    problems, shown = [], set()
    for doc, name, text in marked_tables(root):
        shown.add(name)
        if name not in TABLES:
            problems.append(f"{doc}: unknown table {name!r}; known: {', '.join(TABLES)}")
        elif TABLES[name]() != text:
            problems.append(f"{doc}: table {name!r} differs from its results; it prints:\n"
                            + TABLES[name]())
    problems += [f"table {name!r} is shown by no doc" for name in TABLES if name not in shown]
    return problems


def write(root=ROOT):
    """Rewrite every marked table in the docs from its results; the docs changed."""
    changed = []
    for doc in DOCS:
        path = os.path.join(root, doc)
        with open(path) as f:
            text = f.read()
        new = MARK.sub(lambda m: m.group(0).replace(m.group(2).rstrip("\n"), TABLES[m.group(1)]())
                       if m.group(1) in TABLES else m.group(0), text)
        if new != text:
            with open(path, "w") as f:
                f.write(new)
            changed.append(doc)
    return changed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"tables to print (default all): {', '.join(TABLES)}")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 naming every doc table that differs from its results")
    parser.add_argument("--write", action="store_true",
                        help="rewrite the docs' marked tables from their results")
    args = parser.parse_args(argv)
    if args.write:
        print("rewrote: " + (", ".join(write()) or "nothing (every table matched)"))
        return 0
    if args.check:
        problems = check()
        print("\n".join(problems) or "every doc table matches its results")
        return 1 if problems else 0
    for name in args.names or TABLES:
        if name not in TABLES:
            parser.error(f"unknown table {name!r}; known: {', '.join(TABLES)}")
        print(f"<!-- table: {name} -->\n{TABLES[name]()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
