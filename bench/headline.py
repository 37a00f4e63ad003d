"""The headline table: does pre-training pay? Fine-tuned top-1 of the shipped
ConMIM backbone, scratch and the pixel-regression baseline, and the raw
pixels' frozen probes, at 10 / 100 / all labels per class on Fashion-MNIST.

    python bench/headline.py

Reads committed result files only (nothing is trained):
- `bench/results/finetune_sweep_unit2_e6/results.json`: the shipped backbone (ConMIM, 2x2 units, E = 6);
- `bench/results/finetune_sweep/results.json`: scratch and pixel regression;
- `bench/results/raw_pixels/probe.json`: `recipes/linear_probe.py --raw-pixels --results-json`.
Cells: 10 and 100 labels per class at F = 15 fine-tuning epochs (at least 300 steps), all labels at
F = 1 / 5 / 15; the preset's recipe (`flatten`, and with all labels for 5+ epochs `flatten_plain`,
which is what the recipe's budget rules give there); mean over the seeds each file holds.
"""

import argparse
import json
import os
import statistics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
SOURCES = {"conmim": "finetune_sweep_unit2_e6", "scratch": "finetune_sweep", "pixel": "finetune_sweep"}
COLUMNS = (("10/class", "flatten", "10/15"), ("100/class", "flatten", "100/15"),
           ("all, F=1", "flatten", "all/1"), ("all, F=5", "flatten_plain", "all/5"),
           ("all, F=15", "flatten_plain", "all/15"))
NAMES = {"conmim": "ConMIM (shipped backbone), fine-tuned", "scratch": "from scratch (own recipe)",
         "pixel": "pixel regression (SimMIM), fine-tuned"}


def cell(results, row, arm, cell_name):
    """(mean, number of seeds) of `row|arm|cell|seed` entries, or None."""
    values = [v for k, v in results.items() if k.rsplit("|", 1)[0] == f"{row}|{arm}|{cell_name}"]
    return (statistics.mean(values), len(values)) if values else None


def table(results_dir=RESULTS):
    """The rows as {name: [str per column]}; raises FileNotFoundError naming a missing file."""
    rows = {}
    for row, folder in SOURCES.items():
        with open(os.path.join(results_dir, folder, "results.json")) as f:
            results = json.load(f)["results"]
        found = [cell(results, row, arm, name) for _, arm, name in COLUMNS]
        rows[NAMES[row]] = ["-" if c is None else f"{c[0]:.2f} ({c[1]})" for c in found]
    with open(os.path.join(results_dir, "raw_pixels", "probe.json")) as f:
        probe = json.load(f)["results"]
    rows["raw pixels, linear / kNN (frozen)"] = [
        f"{probe[k]['linear']:.2f} / {probe[k]['knn']:.2f}" if k in probe else "-"
        for k in ("10", "100", "all")] + ["", ""]
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=RESULTS, help="the bench/results folder")
    args = parser.parse_args(argv)
    rows = table(args.results)
    print("Fashion-MNIST test top-1 % (10,000 images); mean over seeds (their number); "
          "all-label probe under 'all, F=1'")
    width = max(map(len, rows)) + 2
    print(f"{'':<{width}}" + "".join(f"{c[0]:>16}" for c in COLUMNS))
    for name, values in rows.items():
        print(f"{name:<{width}}" + "".join(f"{v:>16}" for v in values))
    return rows


if __name__ == "__main__":
    main()
