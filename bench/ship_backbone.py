"""Ship a ConMIM backbone: copy the teacher or the student encoder (the one
with the better frozen probes, mean of kNN and linear, unless --encoder says)
into keras_conmim/weights/ (package data) and write its card. Every number on the card is read from
the measurement files; nothing is typed in. Two sources:

    # the benchmark's conmim row (bench/fashion_mnist.py's results.json)
    python bench/fashion_mnist.py ...          # first
    python bench/ship_backbone.py

    # one pre-training run measured by bench/finetune_sweep.py and
    # recipes/linear_probe.py --results-json (saved beside the run as
    # probe_flatten.json, probe_student_flatten.json, probe_mean.json)
    python bench/ship_backbone.py --pretrain bench/results/RUN/pretrain \
        --sweep bench/results/finetune_sweep_RUN --baseline-sweep bench/results/finetune_sweep
"""

import argparse
import contextlib
import io
import json
import os
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from driver import write_text_atomic  # noqa: E402
from keras_conmim.runs.cli import result_lines  # noqa: E402

NAME = "conmim_vit_mini_p4_28_fmnist.keras"
PRESET = NAME[:-len(".keras")]
LOAD = f"""Load it by its preset name (the `ViT`; input: images normalised with `keras_conmim.normalize_images`):

```python
import keras_conmim
encoder = keras_conmim.ViT.from_preset("{PRESET}")   # the file: keras_conmim/weights/{NAME}
```

`recipes/finetune.py`, `recipes/linear_probe.py`, `recipes/segment.py`, `recipes/detect.py` and
`recipes/export.py` start from it by default (`--encoder {PRESET}`).
"""


def write_card(out, card, config):
    """out/CARD.md: `card`, then the run's resolved pre-training config."""
    config_json = json.dumps(config, indent=2)
    write_text_atomic(os.path.join(out, "CARD.md"),
                      f"{card}Resolved pre-training config:\n\n```json\n{config_json}\n```\n")


def copy_encoder(source, out):
    """Copy `source` to out/NAME whole or not at all; returns the target."""
    target = os.path.join(out, NAME)
    shutil.copyfile(source, target + ".partial")
    os.replace(target + ".partial", target)
    return target


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=os.path.join(ROOT, "bench", "results", "fashion_mnist"))
    p.add_argument("--out", default=os.path.join(ROOT, "keras_conmim", "weights"),
                   help="where the backbone and its CARD.md go (package data: a wheel carries them)")
    p.add_argument("--encoder", choices=("auto", "teacher", "student"), default="auto")
    p.add_argument("--pretrain", default=None,
                   help="a recipes/pretrain.py output folder to ship from instead of --results "
                   "(needs --sweep; its probe_*.json files lie in the folder above it)")
    p.add_argument("--sweep", default=None,
                   help="with --pretrain: the bench/finetune_sweep.py --out that fine-tuned its "
                   "teacher (the conmim row)")
    p.add_argument("--baseline-sweep", default=None,
                   help="with --pretrain: a finetune_sweep --out whose scratch and pixel rows "
                   "go on the card beside it")
    args = p.parse_args(argv)
    if args.pretrain or args.sweep:
        if not (args.pretrain and args.sweep):
            p.error("--pretrain and --sweep go together")
        return ship_from_sweep(args)
    with open(os.path.join(args.results, "results.json")) as f:
        report = json.load(f)
    rows = {r["row"]: r for r in report["rows"]}
    if "conmim" not in rows:
        raise SystemExit("results.json has no conmim row: run bench/fashion_mnist.py with it")
    r = rows["conmim"]
    probes = r["probes"]["all"]
    which = args.encoder
    if which == "auto":
        teacher = (probes["knn"] + probes["linear"]) / 2
        student = (probes.get("student_knn", -1) + probes.get("student_linear", -1)) / 2
        which = "student" if student > teacher else "teacher"
    prefix = "student_" if which == "student" else ""
    source = os.path.join(args.results, "conmim", "pretrain", f"{which}_encoder.keras")
    with open(os.path.join(args.results, "conmim", "pretrain", "config.json")) as f:
        config = json.load(f)
    target = copy_encoder(source, args.out)

    counts = report["labels_per_class"].split(",")
    f_all = [k for k in r["finetune"] if k.endswith("/all")]
    f_few = [k for k in r["finetune"] if not k.endswith("/all")]

    def top1(row, key):
        cell = row["finetune"].get(key)
        return f"{cell['top1']:.2f}" if cell else "-"

    def probe(row, n, pre=""):
        v = row["probes"].get(n, {})
        return f"{v[pre + 'linear']:.2f} / {v[pre + 'knn']:.2f}" if pre + "linear" in v else "-"

    tuned = [o for o in rows.values() if o["finetune"]]
    finetune_table = ("| row | " + " | ".join(f_all + f_few) + " |\n|---|"
                      + "---|" * len(f_all + f_few) + "\n"
                      + "".join(f"| {o['label']} | " + " | ".join(top1(o, k) for k in f_all + f_few)
                                + " |\n" for o in tuned))
    probe_rows = [(r["label"] + f" ({which}, shipped)", r, prefix)]
    probe_rows += [(o["label"], o, "") for k, o in rows.items() if k != "conmim" and o["probes"]]
    probe_table = ("| encoder | " + " | ".join(f"{n} per class" if n != "all" else "all labels"
                                            for n in counts) + " |\n|---|" + "---|" * len(counts)
                   + "\n" + "".join(f"| {name} | " + " | ".join(probe(o, n, pre) for n in counts)
                                    + " |\n" for name, o, pre in probe_rows))
    card = f"""# `{NAME}`

ConMIM-pre-trained `vit_mini_p4_28` encoder (28x28 gray, patch 4, width 128, 6 layers, 4 heads,
shared relative position bias; {os.path.getsize(target) / 1e6:.1f} MB): the {"EMA teacher" if which == "teacher" else "student (its frozen probes beat the EMA teacher's in this run)"} after
{r['pretrain_epochs']} epochs of ConMIM on the 60,000 Fashion-MNIST training images (Debian package
`dataset-fashion-mnist`; Fashion-MNIST is (c) Zalando SE, MIT licence).

{LOAD}
Pre-training: `{pretrain_command(config)}`
(everything else from the preset's recipe; the run's full resolved config is below), made by
`{report['command']}` on {report['machine']}.

Results on the 10,000 Fashion-MNIST test images, top-1 % (from `results.json` of that run).
Fine-tuning (`recipes/finetune.py`, the benchmark's fine-tuned ConMIM row starts from the EMA
teacher; `F=k/all`: k epochs on all labels, `F=k/n`: n labels per class):

{finetune_table}
Frozen features (linear probe / kNN k=20), by labelled images per class:

{probe_table}
"""
    write_card(args.out, card, config)
    print(f"shipped {target} and {os.path.join(args.out, 'CARD.md')}")


def probe_lines(path):
    """The lines recipes/linear_probe.py printed for the result file `path`
    (its --results-json), and their mean of linear and kNN top-1 (None when
    the file is absent)."""
    if not os.path.isfile(path):
        return [], None
    with open(path) as f:
        result = json.load(f)
    values = [v for r in result["results"].values() for v in (r["linear"], r["knn"])]
    return result_lines(result), (sum(values) / len(values) if values else None)


def pretrain_command(config):
    """The recipes/pretrain.py command of a run: the benchmark's flags, and
    every value its config.json says came from a flag."""
    keys = ["backend", "preset", "data", "epochs", "batch_size", "warmup_epochs", "seed"]
    keys += [k for k, source in config.get("recipe_sources", {}).items()
             if source == "flag" and k not in keys]
    return " ".join(["python", "recipes/pretrain.py"]
                    + [f"--{k.replace('_', '-')} {config[k]}" for k in keys if k in config])


def ship_from_sweep(args):
    from finetune_sweep import print_table

    folder = os.path.dirname(os.path.normpath(args.pretrain))
    teacher_lines, teacher = probe_lines(os.path.join(folder, "probe_flatten.json"))
    student_lines, student = probe_lines(os.path.join(folder, "probe_student_flatten.json"))
    which = args.encoder
    if which == "auto":
        if teacher is None or student is None:
            raise SystemExit(f"--encoder auto compares {folder}/probe_flatten.json (teacher) with "
                             "probe_student_flatten.json (student): save both "
                             "(recipes/linear_probe.py --pooling flatten --results-json) or pass --encoder")
        which = "student" if student > teacher else "teacher"
    with open(os.path.join(args.sweep, "results.json")) as f:
        sweep = json.load(f)
    conmim = {k: v for k, v in sweep["results"].items() if k.startswith("conmim|")}
    if not conmim:
        raise SystemExit(f"{args.sweep}/results.json has no conmim row: run "
                         "bench/finetune_sweep.py --rows conmim first")
    table = dict(sweep, results=dict(conmim), commands={})
    if args.baseline_sweep:
        with open(os.path.join(args.baseline_sweep, "results.json")) as f:
            baseline = json.load(f)
        arms = {k.split("|")[1] for k in conmim}
        cells = {k.split("|")[2] for k in conmim}
        for k, v in baseline["results"].items():
            row, arm, cell, _ = k.split("|")
            if row in ("scratch", "pixel") and arm in arms and cell in cells:
                table["results"][k] = v
        if "pixel_encoder" in baseline and any(k.startswith("pixel|") for k in table["results"]):
            table["pixel_encoder"] = baseline["pixel_encoder"]
        table["arms"] = {a: f for a, f in {**baseline["arms"], **sweep["arms"]}.items()
                         if a in arms}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        print_table(table)
    with open(os.path.join(args.pretrain, "config.json")) as f:
        config = json.load(f)
    target = copy_encoder(os.path.join(args.pretrain, f"{which}_encoder.keras"), args.out)
    sweeps = [os.path.relpath(d, ROOT) for d in (args.sweep, args.baseline_sweep) if d]
    mean_lines, _ = probe_lines(os.path.join(folder, "probe_mean.json"))  # the teacher's
    probes, other = ((teacher_lines + mean_lines, student_lines) if which == "teacher"
                     else (student_lines, teacher_lines))
    other_block = ("\nThe other encoder of the run:\n\n```\n" + "\n".join(other) + "\n```\n"
                   if other else "")
    card = f"""# `{NAME}`

ConMIM-pre-trained `{config.get('preset')}` encoder ({os.path.getsize(target) / 1e6:.1f} MB): the \
{"EMA teacher" if which == "teacher" else "student"} after {config.get('epochs')} epochs of ConMIM on \
`{config.get('data')}`{" (Fashion-MNIST is (c) Zalando SE, MIT licence)" if "fashion" in str(config.get("data")).lower() else ""}{" (its flattened frozen probes, mean of linear and kNN, beat the " + ("student's" if which == "teacher" else "EMA teacher's") + ")" if args.encoder == "auto" else ""}.

{LOAD}
Pre-training: `{pretrain_command(config)}`
(everything else from the preset's recipe; the run's full resolved config is below).

Fine-tuning, top-1 % on the test images (`recipes/finetune.py`, one run per seed; the conmim row
fine-tunes this run's EMA teacher; `bench/finetune_sweep.py --report` of {" and ".join(f"`{d}`" for d in sweeps)},
each run's command in its `results.json`):

```
{printed.getvalue().rstrip()}
```

Frozen features of the shipped encoder (`recipes/linear_probe.py`, as it printed them):

```
{chr(10).join(probes) or "(none saved)"}
```
{other_block}
"""
    write_card(args.out, card, config)
    print(f"shipped {target} ({which}) and {os.path.join(args.out, 'CARD.md')}")


if __name__ == "__main__":
    main()
