"""Training speed of the downstream recipes' models: images/s of a train step
(fit on random canvases, after warm-up) for the setting the recipes used
before and the one they use now, per backend, and the share of this machine's
float32 matmul peak that is.

    python bench/downstream_speed.py --backend torch jax tensorflow
    python bench/downstream_speed.py --report

Settings (`SETTINGS`): `before` = 64 px canvases, the pyramid P2-P5 under
DeepLabV3 and P3-P5 under RetinaNet (the recipes until this version); `now` =
48 px canvases (12 x 12 tokens), the levels the heads read (P2-P4 for
DeepLabV3, P3-P4 for RetinaNet). FLOPs per image are XLA's count of one
forward pass (JAX cost analysis) x 3 for forward + backward; the peak is
numpy's / torch's best n x n float32 matmul (bench/step_speed.py). Each
backend runs in its own process, one after another (never two at once).
Writes bench/results/downstream_speed.json.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT = os.path.join(ROOT, "bench", "results", "downstream_speed.json")
SETTINGS = {"before": dict(canvas=64, seg_max_level=5, det_max_level=5),
            "now": dict(canvas=48, seg_max_level=4, det_max_level=4)}
BATCH = 32


def build(task, setting):
    """The recipe's model for `task` in `setting` (random canvases' shape)."""
    import keras_hub

    import keras_conmim as kc
    from keras_conmim.downstream.classifier import finetune_encoder
    from keras_conmim.integrations.kerashub import ViTPyramidBackbone

    s = SETTINGS[setting]
    shape = (s["canvas"], s["canvas"], 1)
    encoder = finetune_encoder(kc.ViT.from_preset("conmim_vit_mini_p4_28_fmnist"), 0.1)
    if task == "segment":
        backbone = ViTPyramidBackbone(encoder, image_shape=shape, max_level=s["seg_max_level"])
        return keras_hub.models.DeepLabV3ImageSegmenter(
            backbone=keras_hub.models.DeepLabV3Backbone(
                image_encoder=backbone, spatial_pyramid_pooling_key="P4", upsampling_size=4,
                dilation_rates=[1, 2, 3], low_level_feature_key="P2", image_shape=shape),
            num_classes=11)
    top = s["det_max_level"]
    backbone = ViTPyramidBackbone(encoder, image_shape=shape, min_level=3, max_level=top)
    return keras_hub.models.RetinaNetObjectDetector(
        backbone=keras_hub.models.RetinaNetBackbone(
            image_encoder=backbone, min_level=3, max_level=top, use_p5=False, image_shape=shape),
        anchor_generator=keras_hub.layers.AnchorGenerator(
            bounding_box_format="yxyx", min_level=3, max_level=top, num_scales=3,
            aspect_ratios=[0.5, 1.0, 2.0], anchor_size=2),
        num_classes=10, bounding_box_format="yxyx")


def data(task, setting, n):
    import numpy as np

    size = SETTINGS[setting]["canvas"]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, size, size, 1)).astype("uint8")
    if task == "segment":
        return x, rng.integers(0, 11, (n, size, size, 1)).astype("int32")
    boxes = np.tile(np.array([[[2, 2, 26, 20], [20, 24, 46, 46]]], "float32"), (n, 1, 1))
    return x, {"boxes": boxes, "labels": np.tile(np.array([[1, 2]], "int32"), (n, 1))}


def measure(task, setting, steps):
    """images/s of `fit` on `steps` batches after one warm-up pass."""
    import keras

    model = build(task, setting)
    kwargs = ({"loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}
              if task == "segment" else {})
    model.compile(optimizer=keras.optimizers.AdamW(1e-4), **kwargs)
    x, y = data(task, setting, BATCH * steps)
    keras.Model.fit(model, x, y, batch_size=BATCH, epochs=1, verbose=0)
    start = time.perf_counter()
    keras.Model.fit(model, x, y, batch_size=BATCH, epochs=1, verbose=0)
    return BATCH * steps / (time.perf_counter() - start)


def forward_flops(task, setting):
    """XLA's FLOP count of one image's forward pass (JAX backend)."""
    import jax
    import numpy as np

    model = build(task, setting)
    x, _ = data(task, setting, 1)
    values = [v.value for v in model.trainable_variables]
    others = [v.value for v in model.non_trainable_variables]

    def forward(tv, ntv, images):
        out, _ = model.stateless_call(tv, ntv, images.astype("float32"))
        return out

    cost = jax.jit(forward).lower(values, others, np.asarray(x)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def child(args):
    """One backend: images/s per (task, setting); on JAX also the FLOPs."""
    out = {}
    for task in ("segment", "detect"):
        for setting in SETTINGS:
            row = {"images_per_second": round(measure(task, setting, args.steps), 2)}
            if args.flops:
                row["gflop_per_image_train"] = round(3 * forward_flops(task, setting) / 1e9, 3)
            out[f"{task}/{setting}"] = row
            print(task, setting, row, flush=True)
    print("RESULT " + json.dumps(out), flush=True)


def table_rows(result):
    """(task, setting, train GFLOP per image, [(backend, images/s, share of
    the peak)]) per row of the result."""
    for task in ("segment", "detect"):
        for setting in SETTINGS:
            key = f"{task}/{setting}"
            gflop = result["gflop_per_image_train"][key]
            cells = []
            for backend, rows in result["backends"].items():
                ips = rows[key]["images_per_second"]
                cells.append((backend, ips, gflop * ips / 1e3 / result["peak_tflops"]))
            yield task, setting, gflop, cells


def report(result):
    lines = [f"downstream train step, batch {BATCH} ({result['machine']}; fp32 matmul peak "
             f"{result['peak_tflops']:.3f} TFLOP/s, measured)",
             "task     setting  canvas  GFLOP/img  " + "  ".join(
                 f"{b + ' img/s':>16} {'%peak':>5}" for b in result["backends"])]
    for task, setting, gflop, cells in table_rows(result):
        lines.append(f"{task:<8} {setting:<8} {SETTINGS[setting]['canvas']:>6}  {gflop:9.2f}  "
                     + "  ".join(f"{ips:16.2f} {100 * share:5.1f}" for _, ips, share in cells))
    for b in result["backends"]:
        ratios = [result["backends"][b][f"{t}/now"]["images_per_second"]
                  / result["backends"][b][f"{t}/before"]["images_per_second"]
                  for t in ("segment", "detect")]
        lines.append(f"{b}: now / before = {ratios[0]:.2f}x (segment), {ratios[1]:.2f}x (detect)")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", nargs="+", default=["torch"],
                   choices=("jax", "tensorflow", "torch"))
    p.add_argument("--steps", type=int, default=8, help="timed batches per setting")
    p.add_argument("--report", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--flops", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if args.report:
        with open(RESULT) as f:
            print(report(json.load(f)))
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from step_speed import measured_fp32_peak

    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "peak_tflops": measured_fp32_peak(), "backends": {}}
    for backend in dict.fromkeys(["jax", *args.backend]):  # JAX first: it counts the FLOPs
        env = dict(os.environ, KERAS_BACKEND=backend)
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--steps", str(args.steps)]
        if backend == "jax":
            cmd.append("--flops")
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            sys.exit(f"{backend}: failed\n{done.stderr[-3000:]}")
        rows = json.loads(lines[0][len("RESULT "):])
        if backend == "jax":
            result["gflop_per_image_train"] = {k: v.pop("gflop_per_image_train")
                                               for k, v in rows.items()}
        if backend in args.backend:
            result["backends"][backend] = rows
    os.makedirs(os.path.dirname(RESULT), exist_ok=True)
    with open(RESULT, "w") as f:
        json.dump(result, f, indent=2)
    print(report(result))


if __name__ == "__main__":
    main()
