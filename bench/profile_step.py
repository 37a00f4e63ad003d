"""Where a ConMIM train step's time goes, per part of the step and per kind of
work: the profile behind docs/benchmarks.md's speed findings.

    python bench/profile_step.py --backend jax                 # XLA:CPU, from a jax.profiler trace
    python bench/profile_step.py --backend torch               # eager torch, from torch.profiler
    python bench/profile_step.py --backend jax torch           # both, back to back, compared
    python bench/profile_step.py --backend torch --release     # torch operators against the release's
    python bench/profile_step.py --backend jax --preset vit_tiny_p4_32 --batch-size 64

It compiles and warms the step with `fit`, then profiles `--steps` more and
sums the time of every kernel the step ran. Each kernel is put in one part of
the step, from where it came from:

- JAX: the HLO op metadata of the compiled step (`op_name`, dumped with
  `--xla_dump_to`): `jvp(vit)` is the student encoder's forward,
  `transpose(jvp(vit))` its backward, `teacher_encoder` the EMA teacher,
  `adam_w` the optimizer; ops outside every layer are the loss (under `jvp`)
  or the EMA update (outside it).
- torch: the layer whose `call` ran the operator (each part is wrapped in a
  `record_function`); backward operators go to the forward part they
  differentiate, matched through autograd's sequence numbers.

Each kernel is also of one kind: matrix products (dots, convolutions,
attention kernels) or everything else (elementwise, reductions, copies).
With `--release` (torch) the release's step (bench/release_torch.py) is
profiled too, and the aten operators where the two steps differ most are
listed side by side. The kernel time is summed
over the threads, so it can exceed the wall time when the two cores work at
once: the table gives each part's share of the summed time, and the step's
wall time beside it.
"""

import argparse
import collections
import glob
import json
import os
import re
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (part, direction) for a kernel, in the order the table prints them.
PARTS = ("views", "masking", "student encoder", "student head", "loss", "teacher encoder",
         "teacher head", "optimizer", "EMA update", "other")
LAYER_PARTS = {"views": "views", "mask_generator": "masking", "encoder": "student encoder",
               "projector": "student head", "teacher_encoder": "teacher encoder",
               "teacher_projector": "teacher head"}


def jax_part(op_name, names):
    """(part, "forward" | "backward") of an XLA kernel from its `op_name`;
    `names` maps a layer's name to its part."""
    direction = "backward" if "transpose(" in op_name else "forward"
    for name, part in names.items():
        if re.search(rf"[(/]{re.escape(name)}[)/]", op_name):
            return part, direction
    if "adam" in op_name or "optimizer" in op_name:
        return "optimizer", "forward"
    if "jvp(" in op_name:
        return "loss", direction
    if op_name.startswith("jit(train_step)/"):
        return "EMA update", "forward"
    return "other", direction


def is_matmul(name):
    """Whether a kernel is a matrix product."""
    name = name.lower()
    return any(key in name for key in ("dot", "ynn_fusion", "xnn_fusion", "onednn", "conv", "mm",
                                       "matmul", "linear", "attention", "gemm", "baddbmm"))


def build(args):
    import keras
    import numpy as np

    import keras_conmim as kc

    keras.utils.set_random_seed(0)
    model = kc.ConMIM.from_preset(args.preset, seed=0, total_steps=10_000)
    images = np.random.RandomState(0).randint(
        0, 256, (args.batch_size * args.steps,) + model.encoder.image_shape).astype("uint8")
    model.compile(optimizer=keras.optimizers.AdamW(5e-4, weight_decay=0.05),
                  jit_compile=args.backend != "torch")
    fit = dict(batch_size=args.batch_size, epochs=1, verbose=0, shuffle=False)
    model.fit(images[: 2 * args.batch_size], **fit)  # compile, warm up
    names = {getattr(model, attr).name: part for attr, part in LAYER_PARTS.items()}
    return model, images, fit, names


def profile_jax(args, dump):
    import jax
    from jax.profiler import ProfileData

    model, images, fit, names = build(args)
    (hlo,) = [p for p in glob.glob(os.path.join(dump, "*train_step*after_optimizations.txt"))
              if "buffer-assignment" not in p and "memory-usage" not in p][-1:]
    with open(hlo) as f:
        op_names = dict(re.findall(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\"]+)\"",
                                   f.read(), flags=re.M))
    trace = os.path.join(dump, "trace")
    start = time.perf_counter()
    with jax.profiler.trace(trace):
        model.fit(images, **fit)
    wall = time.perf_counter() - start
    (path,) = glob.glob(os.path.join(trace, "**", "*.xplane.pb"), recursive=True)
    kernels = collections.Counter()
    for plane in ProfileData.from_file(path).planes:
        for line in plane.lines:
            if "XLAEigen" not in line.name:  # the threads XLA runs kernels on
                continue
            for event in line.events:
                if event.name in op_names:
                    kernels[event.name] += event.duration_ns / 1e9
    rows = collections.Counter()
    for kernel, seconds in kernels.items():
        part, direction = jax_part(op_names[kernel], names)
        rows[(part, direction, "matmul" if is_matmul(kernel) else "other")] += seconds
    top = [(kernel, seconds, op_names[kernel]) for kernel, seconds in kernels.most_common(12)]
    return rows, wall, top


def profile_torch(args):
    import torch
    from torch.autograd.profiler import record_function

    import keras_conmim.models.conmim
    import keras_conmim.models.train_step

    model, images, fit, names = build(args)

    def labelled(function, part):
        def run(*a, **k):
            with record_function(f"part: {part}"):
                return function(*a, **k)
        return run

    for attr, part in LAYER_PARTS.items():  # label each part's forward operators
        layer = getattr(model, attr)
        layer.call = labelled(layer.call, part)
    model.optimizer.apply = labelled(model.optimizer.apply, "optimizer")
    keras_conmim.models.conmim.info_nce_and_accuracy = labelled(
        keras_conmim.models.conmim.info_nce_and_accuracy, "loss")
    keras_conmim.models.train_step.ema = labelled(keras_conmim.models.train_step.ema, "EMA update")
    release = release_step(args) if args.release else None
    wall = 0.0
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        # Step by step, ours then the release's, so a slow spell of the
        # machine falls on both.
        for i in range(args.steps):
            start = time.perf_counter()
            with record_function("step: ours"):
                model.train_on_batch(images[i * args.batch_size: (i + 1) * args.batch_size])
            wall += time.perf_counter() - start
            if release is not None:
                with record_function("step: release"):
                    float(release(i))
    events = prof.events()
    owners = sorted((e.time_range.start, e.time_range.end, e.name[len("step: "):])
                    for e in events if e.name.startswith("step: "))

    def owner(event):
        start = event.time_range.start
        return next((who for a, b, who in owners if a <= start <= b), None)

    release_ops = collections.Counter()
    label = {}  # forward sequence number -> part

    def part_of(event, ancestors=None):
        for parent in [event, *(ancestors or _ancestors(event))]:
            if parent.name.startswith("part: "):
                return parent.name[len("part: "):]
        return None

    for event in events:
        if event.sequence_nr >= 0 and not event.name.startswith("autograd::"):
            label.setdefault(event.sequence_nr, part_of(event) or "other")
    rows = collections.Counter()
    kernels = collections.Counter()
    for event in events:
        if not event.name.startswith("aten::") or event.self_cpu_time_total <= 0:
            continue
        seconds = event.self_cpu_time_total / 1e6
        who = owner(event)
        if who == "release":
            release_ops[event.name] += seconds / args.steps
            continue
        if who != "ours":
            continue
        ancestors = list(_ancestors(event))
        backward = any(p.name.startswith("autograd::engine") for p in ancestors)
        if backward:
            node = next((p for p in ancestors if p.sequence_nr >= 0), None)
            part = label.get(node.sequence_nr, "other") if node is not None else "other"
        else:
            part = part_of(event, ancestors) or "other"
        rows[(part, "backward" if backward else "forward",
              "matmul" if is_matmul(event.name) else "other")] += seconds
        kernels[event.name] += seconds
    top = [(name, seconds, "") for name, seconds in kernels.most_common(12)]
    return rows, wall, top, kernels, (release_ops if release is not None else None)


def release_step(args):
    """The release's step (bench/release_torch.py: float32, synthetic views,
    one fixed mask) at this preset and batch, warmed up as ours is."""
    import release_torch

    from keras_conmim.presets import PRESETS

    preset = PRESETS[args.preset]
    step = release_torch.release_step(preset["config"], preset["projector"], args.batch_size)
    for i in range(2):
        float(step(i))
    return step


def _ancestors(event):
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def inner(args):
    """Runs in the subprocess whose backend is fixed: profile, write JSON."""
    os.environ["KERAS_BACKEND"] = args.backend
    if args.backend == "jax":
        with tempfile.TemporaryDirectory() as dump:  # the HLO and the trace, read then gone
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                       + f" --xla_dump_to={dump} --xla_dump_hlo_pass_re=NONE")
            rows, wall, top = profile_jax(args, dump)
        operators = None
    else:
        rows, wall, top, operators, release_ops = profile_torch(args)
    result = {"backend": args.backend, "preset": args.preset, "batch_size": args.batch_size,
              "steps": args.steps, "wall_seconds_per_step": wall / args.steps,
              "rows": [dict(part=p, direction=d, kind=k, seconds_per_step=s / args.steps)
                       for (p, d, k), s in rows.items()],
              "top_kernels": [dict(kernel=n, seconds_per_step=s / args.steps, op_name=o)
                              for n, s, o in top]}
    if operators is not None:
        result["operators"] = {name: seconds / args.steps for name, seconds in operators.items()}
        if release_ops is not None:
            result["release_operators"] = dict(release_ops)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)


def print_table(result):
    rows = result["rows"]
    total = sum(r["seconds_per_step"] for r in rows)
    print(f"{result['backend']}: {result['preset']}, batch {result['batch_size']}, "
          f"{result['steps']} profiled steps; wall {1e3 * result['wall_seconds_per_step']:.0f} ms "
          f"per step (profiler on), kernels {1e3 * total:.0f} ms per step summed over threads")
    if result.get("cpu"):
        print(f"machine: {result['cpu']}")
    print(f"{'part':<17} {'direction':<9} {'matmul ms':>10} {'other ms':>9} {'share':>7}")
    for part in PARTS:
        for direction in ("forward", "backward"):
            ms = {k: 1e3 * sum(r["seconds_per_step"] for r in rows if r["part"] == part
                               and r["direction"] == direction and r["kind"] == k)
                  for k in ("matmul", "other")}
            if ms["matmul"] + ms["other"] < 0.05:
                continue
            share = (ms["matmul"] + ms["other"]) / 1e3 / total
            print(f"{part:<17} {direction:<9} {ms['matmul']:>10.1f} {ms['other']:>9.1f} "
                  f"{100 * share:>6.1f}%")
    kinds = {k: sum(r["seconds_per_step"] for r in rows if r["kind"] == k)
             for k in ("matmul", "other")}
    print(f"{'all':<27} {1e3 * kinds['matmul']:>10.1f} {1e3 * kinds['other']:>9.1f} "
          f"matmul {100 * kinds['matmul'] / total:.0f}%")
    print("largest kernels (ms per step):")
    for k in result["top_kernels"]:
        print(f"  {1e3 * k['seconds_per_step']:7.1f}  {k['kernel'][:40]:<40} {k['op_name'][-70:]}")
    if "release_operators" in result:
        print_against_release(result["operators"], result["release_operators"])


def print_against_release(ours, release, rows=14):
    """Per aten operator, ms per step: the release's step and ours, the
    operators that differ most first."""
    names = sorted(set(ours) | set(release),
                   key=lambda n: -abs(ours.get(n, 0) - release.get(n, 0)))
    print("against the release's step (torch operators, ms per step):")
    print(f"  {'operator':<42} {'release':>8} {'ours':>8} {'ours - release':>15}")
    total = (sum(release.values()), sum(ours.values()))
    print(f"  {'all':<42} {1e3 * total[0]:>8.1f} {1e3 * total[1]:>8.1f} "
          f"{1e3 * (total[1] - total[0]):>15.1f}")
    for name in names[:rows]:
        a, b = release.get(name, 0), ours.get(name, 0)
        print(f"  {name[:42]:<42} {1e3 * a:>8.1f} {1e3 * b:>8.1f} {1e3 * (b - a):>15.1f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("jax", "torch"), nargs="+", default=["jax"])
    parser.add_argument("--preset", default="vit_mini_p4_28")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--release", action="store_true",
                        help="torch: also profile the release's step (bench/release_torch.py) and "
                        "print the operators where the two differ most")
    parser.add_argument("--json", help="also write the result here")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:  # profiled in this process: Keras reads the backend at import
        os.environ["KERAS_BACKEND"] = args.backend[0]
    from keras_conmim.runs.cli import check_at_least_one
    from keras_conmim.presets import PRESETS

    if args.preset not in PRESETS:
        parser.error(f"--preset {args.preset!r}: choose one of {', '.join(PRESETS)}")
    try:
        check_at_least_one(args, ("batch_size", "steps"))
    except ValueError as e:
        parser.error(str(e))
    if args.inner:
        args.backend = args.backend[0]
        return inner(args)
    from step_speed import cpu_name, script_json

    results = []
    for backend in args.backend:
        cmd = [os.path.abspath(__file__), "--inner", "--backend", backend, "--preset", args.preset,
               "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
        cmd += ["--release"] if args.release and backend == "torch" else []
        result = script_json(cmd, f"profiling {backend}")
        if result is None:
            raise SystemExit(f"profiling {backend} failed (its error is above)")
        result["cpu"] = cpu_name()
        print_table(result)
        print()
        results.append(result)
    if len(results) > 1:
        compare(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results if len(results) > 1 else results[0], f, indent=2)
    return results if len(results) > 1 else results[0]


def compare(results):
    """Kernel time per kind of work, each backend against the first."""
    first = results[0]
    print(f"kernel ms per step, against {first['backend']}'s (profiled back to back):")
    for kind in ("matmul", "other"):
        ms = [1e3 * sum(r["seconds_per_step"] for r in result["rows"] if r["kind"] == kind)
              for result in results]
        print(f"  {kind:<7} " + "  ".join(
            f"{result['backend']} {v:.0f} ({v / ms[0]:.2f}x)" for result, v in zip(results, ms)))


if __name__ == "__main__":
    main()
