"""Train-step speed per backend: images/s, achieved TFLOP/s from an analytic
FLOP count of the whole step, MFU against a peak you pass, and (optional)
the share of the step spent on views + masking.

    python bench/step_speed.py                                  # all backends, CPU preset
    python bench/step_speed.py --backend jax --precision mixed_bfloat16
    python bench/step_speed.py --release --peak-tflops measure   # beside the release's step, MFU of this CPU
    python bench/step_speed.py --release --repeats 3             # medians of 3 rounds (noisy machines)
    python bench/step_speed.py --backend jax --preset vit_base_p16_224 \
        --precision mixed_bfloat16 --batch-size 128 --peak-tflops 989   # one H100 (dense bf16)

For each backend (one subprocess each, since the backend is fixed at import)
it times `fit` over --steps steps after a warm-up fit that compiles. JAX and
TensorFlow run with jit_compile=True (XLA); torch runs eagerly unless
`--torch-compile` (Keras' torch trainer then runs `torch.compile`; the
compile time and graph breaks are printed). `--attention fused|manual|both`
picks the attention path (`ViT(fused_attention=...)`): `both` times each in
the same process, back to back. `--repeats N` runs the whole comparison N
times, round after round, and reports medians: on a shared 2-core VM one
run's figure moves by 10-20%, and a ratio taken within one round is steadier
than either side of it. `--views-share` also times the same step
with views and masking off (float views given, one fixed mask): share =
1 - t_off / t_full.

FLOP model (`step_flops`, per image; a multiply-add is 2 FLOPs; softmax,
norms, GELU, views and EMA left out as O(T D)): with N patches of p x p x C,
T = N + 1 tokens (CLS), width D, MLP width F, L blocks,
    encoder forward  E = 2 N p^2 C D + L (8 T D^2 + 4 T^2 D + 4 T D F)
    projector        H = 2 T (D h + h h + h o)      (3 linears D->h->h->o, per token)
    logits           S = 2 N^2 o                    (each image's N x N patch logits)
    step = 3 (E + H + S)   student forward + backward (backward = 2 x forward)
         + (E + H)         EMA teacher forward, no gradient
The student runs the whole sequence (mask tokens in place), as the release
does. ViT-B/16 at 224 px (release head 4096 -> 256): 173.6 GFLOP per image per step.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def step_flops(config, projector):
    """FLOPs of one ConMIM train step per image (formula in the module
    docstring). `config`: ViT arguments; `projector`: hidden_dim, output_dim."""
    h, w, c = config["image_shape"]
    p = config["patch_size"]
    n = (h // p) * (w // p)
    t = n + 1
    d, f, layers = config["hidden_dim"], config["mlp_dim"], config["num_layers"]
    hid, out = projector["hidden_dim"], projector["output_dim"]
    encoder = 2 * n * p * p * c * d + layers * (8 * t * d * d + 4 * t * t * d + 4 * t * d * f)
    head = 2 * t * (d * hid + hid * hid + hid * out)
    logits = 2 * n * n * out
    return 3 * (encoder + head + logits) + (encoder + head)


def cpu_name():
    """The CPU's model name and whether it has AVX-512 / AMX (Linux), the
    facts a CPU speed figure needs beside it."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                  if line.startswith("model name")), platform.machine())
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines()
                  if line.startswith("flags")), [])
    extras = [name for name, flag in (("AVX-512", "avx512f"), ("AVX512-BF16", "avx512_bf16"),
                                      ("AMX", "amx_tile")) if flag in flags]
    return f"{model}, {os.cpu_count()} cores, " + (", ".join(extras) or "no AVX-512, no AMX")


def peak_value(text):
    """--peak-tflops: a number, or "measure" (this machine's float32 matmul)."""
    return text if text == "measure" else float(text)


def measured_fp32_peak(n=2048, repeats=5):
    """This machine's float32 matmul TFLOP/s: the best of numpy's and torch's
    (whichever is installed) over a few n x n x n products."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n)).astype("float32")
    runs = [lambda: a @ a]
    try:
        import torch

        t = torch.from_numpy(a)
        runs.append(lambda: torch.mm(t, t))
    except ImportError:
        pass
    best = 0.0
    for run in runs:
        run()  # warm up
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            best = max(best, 2 * n ** 3 / (time.perf_counter() - start) / 1e12)
    return best


def measure(args):
    os.environ["KERAS_BACKEND"] = args.backend
    import keras
    import numpy as np
    from keras import ops

    import keras_conmim as kc

    class ViewsAndMasksOff(kc.ConMIM):
        """Same step, fed float views; one fixed mask for every image."""

        def pretext_outputs(self, images, training=False):
            mask = ops.convert_to_tensor(self.fixed_mask)
            mask = ops.broadcast_to(mask, (ops.shape(images)[0], mask.shape[-1]))
            return self.pretext_loss(images, images, mask, training)

    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(args.precision)
    rng = np.random.RandomState(0)
    results = {}
    attention = ("fused", "manual") if args.attention == "both" else (args.attention,)
    variants = [(f"full_{a}", kc.ConMIM, a) for a in attention]
    variants += [("views_masks_off", ViewsAndMasksOff, attention[0])] if args.views_share else []
    jit = args.backend != "torch" or args.torch_compile
    compile_seconds = {}
    for name, cls, how in variants:
        model = cls.from_preset(args.preset, seed=0, total_steps=10_000,
                                encoder_kwargs={"fused_attention": how == "fused"})
        shape = model.encoder.image_shape
        n = args.batch_size * args.steps
        if name.startswith("full"):
            data = rng.randint(0, 256, (n,) + shape).astype("uint8")
        else:
            model.fixed_mask = kc.RandomUnitMasking(model.encoder.grid_size, seed=0).sample(1)
            data = rng.standard_normal((n,) + shape).astype("float32")
        model.compile(optimizer=keras.optimizers.AdamW(5e-4, weight_decay=0.05),
                      jit_compile=jit)
        fit = dict(batch_size=args.batch_size, epochs=1, verbose=0, shuffle=False)
        start = time.perf_counter()
        model.fit(data[: args.batch_size * 2], **fit)  # compile + warm up
        compile_seconds[name] = time.perf_counter() - start
        start = time.perf_counter()
        model.fit(data, **fit)
        results[name] = time.perf_counter() - start
    images = args.batch_size * args.steps
    preset = kc.PRESETS[args.preset]
    flops = step_flops(preset["config"], preset["projector"])
    rows = []
    for how in attention:
        full = results[f"full_{how}"]
        tflops = flops * images / full / 1e12
        out = {
            "backend": args.backend, "preset": args.preset, "batch_size": args.batch_size,
            "precision": args.precision, "steps": args.steps, "images_per_s": images / full,
            "gflop_per_image": flops / 1e9, "tflops": tflops,
            "mfu": tflops / args.peak_tflops if args.peak_tflops else None,
            "jit_compile": jit, "attention": how,
            "warmup_seconds": compile_seconds[f"full_{how}"],
        }
        if args.views_share and how == attention[0]:
            off = results["views_masks_off"]
            out.update(images_per_s_views_masks_off=images / off,
                       views_masks_share=1 - off / full)
        if args.backend == "torch" and jit:
            out["graph_breaks"] = sum(kc.train_step.torch_graph_breaks().values())
        rows.append(out)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("all", "jax", "tensorflow", "torch"), default="all")
    parser.add_argument("--preset", default="vit_mini_p4_28")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--precision", default="float32",
                        choices=("float32", "mixed_bfloat16", "mixed_float16"))
    parser.add_argument("--peak-tflops", type=peak_value, default=None,
                        help="the device's peak at this precision, for MFU (H100 SXM dense "
                        "bf16: 989)")
    parser.add_argument("--attention", choices=("fused", "manual", "both"), default="fused",
                        help="attention path: keras.ops.dot_product_attention or the explicit "
                        "matmul-softmax-matmul; both: each, back to back")
    parser.add_argument("--torch-compile", action="store_true",
                        help="torch: run the step under torch.compile (jit_compile=True)")
    parser.add_argument("--views-share", action="store_true",
                        help="also time the step with views and masking off")
    parser.add_argument("--release", action="store_true",
                        help="also time the release's step as plain PyTorch (bench/release_torch.py: "
                        "float32, synthetic views, one fixed mask) and print each row's ratio to it")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time everything this many times, round after round (each backend "
                        "and the release in a fresh process); report the median images/s, the "
                        "range, and the median of each round's ratio to the release")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--report", metavar="JSON", help="reprint the table of a --json file")
    args = parser.parse_args(argv)
    if args.backend != "all":  # measured in this process: Keras reads it at import
        os.environ["KERAS_BACKEND"] = args.backend
    from keras_conmim.runs.cli import check_at_least_one
    from keras_conmim.presets import PRESETS

    if args.preset not in PRESETS:
        parser.error(f"--preset {args.preset!r}: choose one of {', '.join(PRESETS)}")
    try:
        check_at_least_one(args, ("batch_size", "steps", "repeats"))
    except ValueError as e:
        parser.error(str(e))
    if args.report:
        try:
            with open(args.report) as f:
                rows = json.load(f)
            print_table(rows)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            parser.error(f"--report {args.report}: not a table this script wrote with --json "
                         f"({type(error).__name__}: {error}); pass a file from --json, e.g. "
                         "bench/results/step_speed_cpu.json")
        return rows
    if args.peak_tflops == "measure":
        args.peak_tflops = measured_fp32_peak()
        print(f"measured float32 matmul peak: {args.peak_tflops:.3f} TFLOP/s "
              "(the best of numpy and torch, 2048 x 2048 x 2048)")
    if args.repeats == 1 and args.backend != "all":
        rows = release_row(args) if args.release else []
        rows += measure(args)
    else:
        backends = ("jax", "tensorflow", "torch") if args.backend == "all" else (args.backend,)
        rounds = []
        for i in range(args.repeats):
            rows = release_row(args) if args.release else []
            rounds.append(rows + [row for backend in backends
                                  for row in measure_in_subprocess(args, backend)])
            if args.repeats > 1:
                print(f"round {i + 1}/{args.repeats}: " + ", ".join(
                    f"{r['backend']} {r['images_per_s']:.1f}" for r in rounds[-1]), flush=True)
        rows = combine(rounds, args.peak_tflops)
    for row in rows:
        row.setdefault("cpu", cpu_name())
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


def script_json(cmd, what):
    """Run `python *cmd --json PATH` and return what the script wrote to PATH;
    None, with `what` and the end of its stderr printed, if it failed."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "result.json")
        out = subprocess.run([sys.executable, *cmd, "--json", path], capture_output=True,
                             text=True)
        if out.returncode or not os.path.isfile(path):
            print(f"{what}: failed\n{out.stderr[-2000:]}")
            return None
        with open(path) as f:
            return json.load(f)


def measure_in_subprocess(args, backend):
    """`measure` for one backend in a fresh process (the backend is fixed at
    import); [] with the error printed if it fails."""
    cmd = [__file__, "--backend", backend, "--preset", args.preset,
           "--batch-size", str(args.batch_size), "--steps", str(args.steps),
           "--precision", args.precision, "--attention", args.attention]
    cmd += ["--views-share"] if args.views_share else []
    cmd += ["--torch-compile"] if args.torch_compile and backend == "torch" else []
    cmd += ["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []
    return script_json(cmd, backend) or []


def combine(rounds, peak_tflops=None):
    """One row per (backend, attention) from repeated rounds: the median
    images/s, every round's figure (`runs`), and, where a round timed the
    release, the median of the rounds' own ratios to it (`vs_release`, with
    `vs_release_runs`) -- each ratio taken within one round, so a slow spell
    of the machine moves both sides of it."""
    import statistics

    order, runs, ratios = [], {}, {}
    for rows in rounds:
        release = next((r["images_per_s"] for r in rows if r["backend"].startswith("release")),
                       None)
        for r in rows:
            key = (r["backend"], r["attention"])
            if key not in runs:
                order.append(r)
                runs[key], ratios[key] = [], []
            runs[key].append(r["images_per_s"])
            if release:
                ratios[key].append(r["images_per_s"] / release)
    combined = []
    for first in order:
        key = (first["backend"], first["attention"])
        row = dict(first, images_per_s=statistics.median(runs[key]), runs=runs[key])
        row["tflops"] = row["images_per_s"] * row["gflop_per_image"] / 1e3
        row["mfu"] = row["tflops"] / peak_tflops if peak_tflops else None
        if ratios[key]:
            row.update(vs_release=statistics.median(ratios[key]), vs_release_runs=ratios[key])
        combined.append(row)
    return combined


def print_table(rows):
    """The table of a run's rows (each carries its preset, batch, precision,
    steps and CPU)."""
    first = rows[0] if rows else {}
    print(f"preset {first.get('preset')}, batch {first.get('batch_size')}, "
          f"{first.get('precision')}, {first.get('steps')} timed steps; "
          f"{first.get('gflop_per_image', 0):.3f} GFLOP per image per step")
    print(f"machine: {first.get('cpu', 'not recorded')}")
    release = next((r["images_per_s"] for r in rows if r["backend"].startswith("release")), None)
    repeated = any(len(r.get("runs", ())) > 1 for r in rows)
    print(f"{'backend':<22} {'attention':<9} {'compiled':<9} {'img/s':>9} {'TFLOP/s':>9} "
          f"{'MFU':>7} {'views+masks share':>18} {'warm-up s':>10}"
          + (f" {'vs release':>10}" if release else "")
          + (f"  {'img/s per round':<24} {'vs release per round'}" if repeated else ""))
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        share = f"{100 * r['views_masks_share']:.1f}%" if "views_masks_share" in r else "-"
        compiled = str(r["jit_compile"]) + (f" ({r['graph_breaks']} breaks)"
                                            if "graph_breaks" in r else "")
        ratio = r.get("vs_release", r["images_per_s"] / release if release else None)
        line = (f"{r['backend']:<22} {r['attention']:<9} {compiled:<9} {r['images_per_s']:>9.1f} "
                f"{r['tflops']:>9.4f} {mfu:>7} {share:>18} {r['warmup_seconds']:>10.1f}"
                + (f" {ratio:>9.2f}x" if release else ""))
        if repeated:
            line += "  " + f"{' '.join(f'{v:.1f}' for v in r['runs']):<24} " + " ".join(
                f"{v:.2f}" for v in r.get("vs_release_runs", ()))
        print(line)
    if repeated:
        print("img/s and vs release: medians over the rounds (each ratio within its own round)")


def release_row(args):
    """The release's step as plain PyTorch (bench/release_torch.py), in a
    subprocess, in the same run as ours; float32 whatever --precision."""
    rows = script_json([os.path.join(ROOT, "bench", "release_torch.py"), "--preset", args.preset,
                        "--batch-size", str(args.batch_size), "--steps", str(args.steps)],
                       "release")
    if rows is None:
        return []
    (row,) = rows
    from keras_conmim.presets import PRESETS

    flops = step_flops(PRESETS[args.preset]["config"], PRESETS[args.preset]["projector"])
    tflops = flops * row["images_per_s"] / 1e12
    row.update(precision="float32", gflop_per_image=flops / 1e9, tflops=tflops, attention="manual",
               mfu=tflops / args.peak_tflops if args.peak_tflops else None, jit_compile=False,
               warmup_seconds=0.0)
    return [row]


if __name__ == "__main__":
    main()
