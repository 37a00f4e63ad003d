"""Short pre-training runs that differ in one knob each, judged by frozen
features (kNN and linear probe of teacher and student). A diagnostic for
"why are ConMIM's features weak at this budget?", not a benchmark.

    python bench/probe_sweep.py --backend torch --steps 400
    python bench/probe_sweep.py --variants base,weak_teacher --steps 200 --data default
    python bench/probe_sweep.py --checkpoints run/checkpoints/ckpt-*.keras   # saved runs

Every variant starts from the same seed and data order and changes one thing
against `base` (the settings of bench/fashion_mnist.py's conmim row). The
`random` row evaluates the untrained encoder. Features: mean-pooled patch
tokens; kNN (k=20, T=0.07) and a 30-epoch linear probe, bank = the first
--bank training images, queries = the first --queries test images. Prints one
table and writes --out/probe_sweep.json after every row. With --checkpoints
it trains nothing: it evaluates the teacher and student of each saved ConMIM
model (a run's checkpoints: how the two move over training) and writes
--out/checkpoints.json.
"""

import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOMETRIC_OFF = dict(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)
# name: (what it changes, recipes/pretrain.py flags, PairedViews overrides)
VARIANTS = {
    "random": ("untrained encoder", [], {}),
    "base": ("the preset's recipe (crop 0.35-1, strong teacher view)", [], {}),
    "weak_teacher": ("no photometric perturbation of the teacher view", [], PHOTOMETRIC_OFF),
    "no_crop": ("no random resized crop (flip only)", ["--crop-scale-min", "1.0"], {}),
    "wide_crop": ("crop 0.08-1 (the release's ImageNet range)", ["--crop-scale-min", "0.08"], {}),
    "lr_2e-3": ("peak lr 2e-3", ["--lr", "2e-3"], {}),
    "momentum_0.99": ("teacher momentum 0.99 -> 0.999",
                      ["--base-momentum", "0.99", "--final-momentum", "0.999"], {}),
    "block_mask": ("block-wise masking", ["--mask", "block"], {}),
    "temperature_0.2": ("InfoNCE temperature 0.2", ["--temperature", "0.2"], {}),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("jax", "tensorflow", "torch"),
                   default=os.environ.get("KERAS_BACKEND", "jax"))
    p.add_argument("--variants", default="random,base,weak_teacher,no_crop,lr_2e-3,momentum_0.99",
                   help=f"comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--data", default="idx:/usr/share/datasets/fashion-mnist",
                   help="default | idx:DIR (train-*/t10k-* IDX files)")
    p.add_argument("--steps", type=int, default=400, help="pre-training steps per variant")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--bank", type=int, default=10000)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoints", nargs="+", default=None, metavar="FILE",
                   help="evaluate these saved ConMIM models instead of training variants")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "probe_sweep"))
    args = p.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    if args.steps < 2:
        p.error("--steps must be >= 2")
    missing = [f for f in args.checkpoints or () if not os.path.isfile(f)]
    if missing:
        p.error(f"--checkpoints: not found: {', '.join(missing)}")
    args.variants = names
    return args


def build(name, steps, args):
    """recipes/pretrain.py's model for the preset's recipe plus the variant's
    change, with a schedule of `steps` steps (a fifth of them warmup)."""
    import keras

    from keras_conmim.runs.pretrain_config import build_model, resolve_config

    _, flags, views = VARIANTS[name]
    config, _, _ = resolve_config(["--preset", "vit_mini_p4_28", "--epochs", "1",
                                   "--warmup-epochs", "0.2", "--seed", str(args.seed), *flags])
    config["views"] = {**config["views"], **views}
    keras.utils.set_random_seed(args.seed)
    return build_model(config, steps)


def probe(evaluation, encoder, bank, queries):
    train_f = evaluation.extract_features(encoder, bank.images)
    test_f = evaluation.extract_features(encoder, queries.images)
    knn = evaluation.knn_accuracy(train_f, bank.labels, test_f, queries.labels)
    linear = evaluation.linear_probe(train_f, bank.labels, test_f, queries.labels, epochs=30)
    return round(100 * knn, 2), round(100 * linear, 2)


def main(argv=None):
    args = parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    import keras
    import numpy as np

    from keras_conmim import data

    from keras_conmim.downstream import evaluation
    from keras_conmim.atomic import write_text_atomic
    from keras_conmim.runs.finetuning import load_splits

    splits = load_splits(args.data, (28, 28, 1))
    train, test = splits.train, splits.test
    bank = data.from_arrays(train.batch(np.arange(min(args.bank, len(train)))),
                            train.labels[: args.bank])
    queries = data.from_arrays(test.batch(np.arange(min(args.queries, len(test)))),
                               test.labels[: args.queries])
    os.makedirs(args.out, exist_ok=True)
    out_json = os.path.join(args.out, "checkpoints.json" if args.checkpoints else "probe_sweep.json")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, backend {args.backend}"
    rows = []
    jobs = ([(os.path.basename(f), f) for f in args.checkpoints] if args.checkpoints
            else [(name, None) for name in args.variants])
    for name, path in jobs:
        start = time.perf_counter()
        if path:
            model = keras.saving.load_model(path)
            step = int(keras.ops.convert_to_numpy(model.step_counter))
            row = {"variant": name, "change": f"saved model at step {step}"}
        else:
            model = build(name, args.steps, args)
            row = {"variant": name, "change": VARIANTS[name][0]}
            if name == "random":
                model.encoder(keras.ops.zeros((1, 28, 28, 1)))
            else:
                history = model.fit(train.dataset(args.batch_size, seed=args.seed),
                                    steps_per_epoch=args.steps, epochs=1, verbose=0).history
                row["loss"] = round(history["loss"][-1], 4)
                row["lookup"] = round(100 * history["lookup_accuracy"][-1], 2)
        if name != "random":
            row["student_knn"], row["student_linear"] = probe(evaluation, model.encoder, bank, queries)
        row["teacher_knn"], row["teacher_linear"] = probe(evaluation, model.teacher_encoder, bank, queries)
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
        write_text_atomic(out_json, json.dumps(
            {"machine": machine, "steps": args.steps, "batch_size": args.batch_size,
             "data": args.data, "bank": len(bank), "queries": len(queries),
             "command": " ".join(["python", "bench/probe_sweep.py", *(argv or sys.argv[1:])]),
             "rows": rows}, indent=2))
    print(f"\n{'saved models' if args.checkpoints else f'{args.steps} steps x batch {args.batch_size}'}"
          f", {machine}; kNN/linear on "
          f"{len(queries)} test images, bank {len(bank)}")
    print(f"{'variant':<20} {'loss':>6} {'lookup':>6} {'T kNN':>6} {'T lin':>6} {'S kNN':>6} "
          f"{'S lin':>6}  change")
    for r in rows:
        cell = lambda k: f"{r[k]:>6.2f}" if k in r else f"{'-':>6}"  # noqa: E731
        print(f"{r['variant']:<20} {cell('loss')} {cell('lookup')} {cell('teacher_knn')} "
              f"{cell('teacher_linear')} {cell('student_knn')} {cell('student_linear')}  {r['change']}")


if __name__ == "__main__":
    main()
