"""GPU readiness at compile time, on any machine (JAX): the whole ConMIM train
step lowered and compiled by XLA without running it, and what XLA says of it.

    python bench/compile_report.py                                   # ViT-B/16, bf16, batch 128
    python bench/compile_report.py --preset vit_mini_p4_28 --batch-size 64 --precision float32

Printed, for the step at --batch-size:
- XLA's own FLOP count (`cost_analysis`) beside the analytic `step_flops` of
  bench/step_speed.py: more than ~10% above it means work done twice (an
  encoder pass too many, a recomputed projection);
- the compiled step's argument, output and temporary memory, and, from a
  second compile at half the batch (temporaries grow linearly with it),
  the largest batch whose step fits --device-gib (80: one H100);
- host transfers and host callbacks inside the step (infeed, outfeed,
  send / recv, Python callbacks): each one stalls an accelerator, so the
  count must be 0.
The compile targets this machine's backend (the CPU here): memory is XLA's
buffer assignment for that backend, an estimate of a GPU's (the kernels
and their fusions differ, the tensors they hold do not). Nothing runs and
no weights are copied to a device: the state is given as shapes.
"""

import argparse
import json
import os
import re
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What would stall an accelerator inside a compiled step.
HOST_TRAFFIC = re.compile(r"\b(infeed|outfeed|send|recv|send-done|recv-done)\b|"
                          r"custom_call_target=\"[^\"]*(callback|host)[^\"]*\"", re.IGNORECASE)


def lower_train_step(preset, batch_size, precision="mixed_bfloat16", fused_attention=True):
    """(lowered, model): the jitted ConMIM train step of `preset` at
    `batch_size`, lowered from shapes alone (JAX backend)."""
    import jax
    import keras

    import keras_conmim as kc

    keras.config.set_dtype_policy(precision)
    try:
        model = kc.ConMIM.from_preset(preset, seed=0, total_steps=10_000,
                                      encoder_kwargs={"fused_attention": fused_attention})
        model.compile(optimizer=keras.optimizers.AdamW(5e-4, weight_decay=0.05),
                      jit_compile=True)
        model.optimizer.build(model.trainable_variables)
    finally:
        keras.config.set_dtype_policy("float32")

    def shapes(variables):
        return [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in variables]

    state = (shapes(model.trainable_variables), shapes(model.non_trainable_variables),
             shapes(model.optimizer.variables), shapes(model.metrics_variables))
    images = jax.ShapeDtypeStruct((batch_size,) + tuple(model.encoder.image_shape), "uint8")
    step = jax.jit(model.train_step, donate_argnums=0)
    return step.lower(state, (images,)), model


def report(preset="vit_base_p16_224", batch_size=128, precision="mixed_bfloat16",
           device_gib=80.0, fused_attention=True, fit_batch=True):
    """The compile report as a dict (see the module docstring)."""
    from step_speed import step_flops

    import keras_conmim as kc

    start = time.perf_counter()
    lowered, model = lower_train_step(preset, batch_size, precision, fused_attention)
    compiled = lowered.compile()
    seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    memory = compiled.memory_analysis()
    spec = kc.PRESETS[preset]
    analytic = step_flops({**spec["config"], "image_shape": model.encoder.image_shape},
                          spec["projector"]) * batch_size
    hlo = compiled.as_text()
    host = sorted({m.group(0) for m in HOST_TRAFFIC.finditer(hlo)})
    out = {
        "preset": preset, "batch_size": batch_size, "precision": precision,
        "fused_attention": fused_attention, "compile_seconds": round(seconds, 1),
        "xla_flops": float(cost.get("flops", float("nan"))), "analytic_flops": float(analytic),
        "argument_bytes": int(memory.argument_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
        "temp_bytes": int(memory.temp_size_in_bytes),
        "alias_bytes": int(memory.alias_size_in_bytes),
        "host_transfers": len(host), "host_transfer_ops": host,
    }
    out["flops_ratio"] = out["xla_flops"] / out["analytic_flops"]
    # donated state aliases the outputs: arguments + temporaries is the peak
    out["step_bytes"] = out["argument_bytes"] + out["temp_bytes"] + max(
        0, out["output_bytes"] - out["alias_bytes"])
    if fit_batch and batch_size >= 2:
        half, _ = lower_train_step(preset, batch_size // 2, precision, fused_attention)
        half_temp = half.compile().memory_analysis().temp_size_in_bytes
        per_image = (out["temp_bytes"] - half_temp) / (batch_size - batch_size // 2)
        fixed = out["step_bytes"] - per_image * batch_size
        out["temp_bytes_per_image"] = per_image
        out["max_batch_in_device"] = (int((device_gib * 2**30 - fixed) // per_image)
                                      if per_image > 0 else None)
        out["device_gib"] = device_gib
    return out


def describe(r):
    gib = 2**30
    lines = [
        f"{r['preset']} train step, batch {r['batch_size']}, {r['precision']}, attention "
        f"{'fused' if r['fused_attention'] else 'manual'} (compiled in {r['compile_seconds']} s, "
        "not run)",
        f"  FLOPs: XLA {r['xla_flops'] / 1e12:.3f} T, analytic step_flops "
        f"{r['analytic_flops'] / 1e12:.3f} T, ratio {r['flops_ratio']:.3f}",
        f"  memory: arguments {r['argument_bytes'] / gib:.2f} GiB, temporaries "
        f"{r['temp_bytes'] / gib:.2f} GiB, step peak {r['step_bytes'] / gib:.2f} GiB",
        f"  host transfers / callbacks inside the step: {r['host_transfers']}"
        + (f" ({', '.join(r['host_transfer_ops'])})" if r["host_transfer_ops"] else ""),
    ]
    if "max_batch_in_device" in r:
        fits = r["step_bytes"] <= r["device_gib"] * gib
        lines.append(f"  {r['temp_bytes_per_image'] / 2**20:.1f} MiB of temporaries per image: "
                     f"batch {r['batch_size']} {'fits' if fits else 'does NOT fit'} in "
                     f"{r['device_gib']:g} GiB; the most that fits is about "
                     f"{r['max_batch_in_device']}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vit_base_p16_224")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precision", default="mixed_bfloat16",
                        choices=("float32", "mixed_bfloat16", "mixed_float16"))
    parser.add_argument("--device-gib", type=float, default=80.0,
                        help="the accelerator's memory (H100: 80, H200: 141)")
    parser.add_argument("--attention", choices=("fused", "manual"), default="fused")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    os.environ["KERAS_BACKEND"] = "jax"
    r = report(args.preset, args.batch_size, args.precision, args.device_gib,
               args.attention == "fused")
    print(describe(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return r


if __name__ == "__main__":
    main()
