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
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.fashion_mnist import write_text_atomic  # noqa: E402  (no keras import)

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
    target = os.path.join(args.out, NAME)
    tmp = target + ".partial"
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)

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

Results on the 10,000 Fashion-MNIST test images, top-1 % (from `results.json` of that run).
Fine-tuning (`recipes/finetune.py`, the benchmark's fine-tuned ConMIM row starts from the EMA
teacher; `F=k/all`: k epochs on all labels, `F=k/n`: n labels per class):

{finetune_table}
Frozen features (linear probe / kNN k=20), by labelled images per class:

{probe_table}
Resolved pre-training config:

```json
{json.dumps(config, indent=2)}
```
"""
    write_text_atomic(os.path.join(args.out, "CARD.md"), card)
    print(f"shipped {target} and {os.path.join(args.out, 'CARD.md')}")


if __name__ == "__main__":
    main()
