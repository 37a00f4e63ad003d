"""Ship the benchmark's ConMIM backbone: copy the teacher or the student
encoder of the `conmim` row (the one with the better frozen probes, mean of
kNN and linear, unless --encoder says) into saved_models/ and write its card
from results.json (every number on the card comes from that file; nothing is
typed in).

    python bench/fashion_mnist.py ...          # first
    python bench/ship_backbone.py
"""

import argparse
import json
import os
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "conmim_vit_mini_p4_28_fmnist.keras"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=os.path.join(ROOT, "bench", "results", "fashion_mnist"))
    p.add_argument("--out", default=os.path.join(ROOT, "saved_models"))
    p.add_argument("--encoder", choices=("auto", "teacher", "student"), default="auto")
    args = p.parse_args(argv)
    with open(os.path.join(args.results, "results.json")) as f:
        report = json.load(f)
    rows = {r["row"]: r for r in report["rows"]}
    if "conmim" not in rows:
        raise SystemExit("results.json has no conmim row: run bench/fashion_mnist.py with it")
    r = rows["conmim"]
    which = args.encoder
    if which == "auto":
        teacher = (r["knn"] + r["linear"]) / 2
        student = (r.get("student_knn", -1) + r.get("student_linear", -1)) / 2
        which = "student" if student > teacher else "teacher"
    if which == "student":  # the card's probe columns describe the shipped encoder
        r = {**r, "knn": r["student_knn"], "linear": r["student_linear"]}
    source = os.path.join(args.results, "conmim", "pretrain", f"{which}_encoder.keras")
    with open(os.path.join(args.results, "conmim", "pretrain", "config.json")) as f:
        config = json.load(f)
    target = os.path.join(args.out, NAME)
    tmp = target + ".partial"
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    cell = lambda row, key: f"{row[key]:.2f}" if key in row else "-"  # noqa: E731
    others = "".join(f"| {o['label']} | {cell(o, 'finetune_top1')} | {cell(o, 'linear')} | "
                     f"{cell(o, 'knn')} |\n" for k, o in rows.items() if k != "conmim")
    reference = ""
    if "random_init" in rows:
        ref = rows["random_init"]
        weak = r["knn"] - ref["knn"] < 1
        reference = (f"\nRead the frozen numbers against the same encoder at random init: linear "
                     f"{ref['linear']:.2f}, kNN {ref['knn']:.2f} ({r['linear'] - ref['linear']:+.2f} "
                     f"and {r['knn'] - ref['knn']:+.2f} for this backbone)."
                     + (" By kNN its features are no better than random init's: at this budget it "
                        "is a working artefact of the pipeline, not yet a useful starting point."
                        if weak else "") + "\n")
    card = f"""# `{NAME}`

ConMIM-pre-trained `vit_mini_p4_28` encoder (28x28 gray, patch 4, width 128, 6 layers, 4 heads,
shared relative position bias; {os.path.getsize(target) / 1e6:.1f} MB): the {"EMA teacher" if which == "teacher" else "student (its frozen probes beat the EMA teacher's in this run)"} after
{r['pretrain_epochs']} epochs of ConMIM on the 60,000 Fashion-MNIST training images (Debian package
`dataset-fashion-mnist`; Fashion-MNIST is (c) Zalando SE, MIT licence).

Load it in one call (the `ViT`; input: images normalised with `keras_conmim.normalize_images`):

```python
import keras_conmim
encoder = keras_conmim.load_encoder("saved_models/{NAME}")
```

`recipes/finetune.py`, `recipes/segment.py`, `recipes/detect.py` and `recipes/export.py` start
from it by default.

Pre-training: `{' '.join(['python', 'recipes/pretrain.py'] + [f'--{k.replace("_", "-")} {v}' for k, v in config.items() if k in ('backend', 'preset', 'data', 'epochs', 'batch_size', 'warmup_epochs', 'seed')])}`
(everything else from the preset's recipe; the run's full resolved config is below), made by
`{report['command']}` on {report['machine']}.

Results on the 10,000 Fashion-MNIST test images (from `results.json` of that run):

| | top-1 % |
|---|---|
| fine-tune {r['finetune_epochs']} epoch(s) of the teacher (`recipes/finetune.py`) | {r['finetune_top1']:.2f} |
| linear probe (frozen, mean-pooled) | {r['linear']:.2f} |
| kNN (k=20, cosine) | {r['knn']:.2f} |
{reference}
Other rows of the same run, top-1 %:

| row | fine-tune | linear | kNN |
|---|---|---|---|
{others}
Resolved pre-training config:

```json
{json.dumps(config, indent=2)}
```
"""
    with open(os.path.join(args.out, "CARD.md"), "w") as f:
        f.write(card)
    print(f"shipped {target} and {os.path.join(args.out, 'CARD.md')}")


if __name__ == "__main__":
    main()
