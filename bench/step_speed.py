"""Train-step speed per backend, and the share of it spent on views + masking.

    python bench/step_speed.py                       # all three backends
    python bench/step_speed.py --backend jax --batch-size 128 --steps 20

For each backend (one subprocess each, since the backend is fixed at import)
it times `fit` over --steps steps after a warm-up fit that compiles, twice:
the full ConMIM step (uint8 in; views, masks, both encoders, heads, loss,
AdamW, EMA) and the same step with views and masking off (float views given,
one fixed mask). The share is `1 - t_off / t_full`, measured in one run.
JAX and TensorFlow run with jit_compile=True (XLA); torch runs eagerly
(Keras' torch trainer has no XLA). Prints one line per backend.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(args):
    os.environ["KERAS_BACKEND"] = args.backend
    sys.path.insert(0, ROOT)
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
    rng = np.random.RandomState(0)
    results = {}
    for name, cls in (("full", kc.ConMIM), ("views_masks_off", ViewsAndMasksOff)):
        model = cls.from_preset(args.preset, seed=0, total_steps=10_000)
        shape = model.encoder.image_shape
        n = args.batch_size * args.steps
        if name == "full":
            data = rng.randint(0, 256, (n,) + shape).astype("uint8")
        else:
            model.fixed_mask = kc.RandomUnitMasking(model.encoder.grid_size, seed=0).sample(1)
            data = rng.standard_normal((n,) + shape).astype("float32")
        jit = args.backend != "torch"
        model.compile(optimizer=keras.optimizers.AdamW(5e-4, weight_decay=0.05),
                      jit_compile=jit)
        fit = dict(batch_size=args.batch_size, epochs=1, verbose=0, shuffle=False)
        model.fit(data[: args.batch_size * 2], **fit)  # compile + warm up
        start = time.perf_counter()
        model.fit(data, **fit)
        results[name] = time.perf_counter() - start
    full, off = results["full"], results["views_masks_off"]
    images = args.batch_size * args.steps
    return {
        "backend": args.backend, "preset": args.preset, "batch_size": args.batch_size,
        "steps": args.steps, "images_per_s": images / full,
        "images_per_s_views_masks_off": images / off,
        "views_masks_share": 1 - off / full,
        "jit_compile": args.backend != "torch",
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("all", "jax", "tensorflow", "torch"), default="all")
    parser.add_argument("--preset", default="vit_mini_p4_28")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.backend != "all":
        print("RESULT " + json.dumps(measure(args)), flush=True)
        return
    rows = []
    for backend in ("jax", "tensorflow", "torch"):
        cmd = [sys.executable, __file__, "--backend", backend, "--preset", args.preset,
               "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode or not line:
            print(f"{backend}: failed\n{out.stderr[-2000:]}")
            continue
        rows.append(json.loads(line[0][7:]))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; preset {args.preset}, "
          f"batch {args.batch_size}, {args.steps} timed steps")
    print(f"{'backend':<11} {'img/s':>8} {'img/s (views+masks off)':>24} {'views+masks share':>18}")
    for r in rows:
        print(f"{r['backend']:<11} {r['images_per_s']:>8.1f} {r['images_per_s_views_masks_off']:>24.1f} "
              f"{100 * r['views_masks_share']:>17.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
