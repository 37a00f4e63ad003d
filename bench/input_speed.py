"""Input pipeline speed against the train step's, measured in one run.

    python bench/input_speed.py                      # JAX backend, default preset
    python bench/input_speed.py --backend torch --batch-size 64
    python bench/input_speed.py --skip-step --jpegs 800    # decode paths only

Rates (images/s) printed:
- the train step of the default small preset (fit on uint8 batches; XLA on
  jax/tensorflow), the number the pipeline must outrun (--skip-step: none);
- the packaged default data through tf.data and through the numpy PyDataset;
- a folder of --jpegs JPEG files this script writes, 224 px-class photos'
  sizes (varied, around 400 x 350, RGB, quality 90), decoded and resized to
  224 x 224 (shorter side, center crop) by both paths: tf.io inside tf.data
  (`data.tf_decode`) and PIL (in tf.numpy_function; and the numpy PyDataset
  used without TensorFlow). Each on one core (tf.data's private thread pool
  of 1; one PyDataset worker) and on all cores. Without TensorFlow (a JAX
  or torch GPU box) the tf.data rows are left out and said so.
- how many such cores one GPU's ConMIM step would need: ViT-B/16 at 224 px
  is `step_speed.step_flops` = 173.6 GFLOP per image per step, so a GPU at
  --gpu-tflops (default 300, bf16 achieved) takes 300e12 / 173.6e9 = 1,728
  images/s.
"""

import argparse
import os
import platform
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rate(batches, batch_size, n):
    it = iter(batches) if hasattr(batches, "take") else None
    get = (lambda i: next(it)) if it else (lambda i: batches[i])
    get(0)  # warm up (tf.data graph, first decode)
    start = time.perf_counter()
    for i in range(1, n + 1):
        get(i)
    return n * batch_size / (time.perf_counter() - start)


def write_jpegs(folder, n, seed=0):
    """n RGB JPEGs of varied sizes around 400 x 350 (smooth shapes + noise,
    so they compress like photos rather than like flat colour)."""
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(seed)
    total = 0
    for i in range(n):
        h, w = int(rng.randint(300, 420)), int(rng.randint(330, 480))
        yy, xx = np.mgrid[:h, :w].astype("float32")
        freq = rng.uniform(0.01, 0.05, 3)
        image = np.stack([127 + 100 * np.sin(yy * freq[c] + xx * freq[(c + 1) % 3] + c)
                          for c in range(3)], -1)
        image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype("uint8")
        path = os.path.join(folder, f"{i:05d}.jpg")
        Image.fromarray(image).save(path, quality=90)
        total += os.path.getsize(path)
    return total / n


def single_threaded(ds):
    import tensorflow as tf

    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("jax", "tensorflow", "torch"), default="jax",
                        help="Keras backend, set before the package (and Keras) is imported")
    parser.add_argument("--preset", default="vit_mini_p4_28")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--jpegs", type=int, default=600)
    parser.add_argument("--jpeg-batch", type=int, default=32)
    parser.add_argument("--gpu-tflops", type=float, default=300.0)
    parser.add_argument("--skip-step", action="store_true")
    args = parser.parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    import numpy as np

    import keras_conmim as kc
    from keras_conmim import data
    from step_speed import step_flops

    b = args.batch_size
    source = data.load_default()
    rows = []
    step_rate = None
    if not args.skip_step:
        model = kc.ConMIM.from_preset(args.preset, seed=0, total_steps=10_000)
        model.compile(optimizer="adamw", jit_compile=args.backend != "torch")
        images = source.batch(np.arange(b * args.steps) % len(source))
        model.fit(images[: 2 * b], batch_size=b, epochs=1, verbose=0)
        start = time.perf_counter()
        model.fit(images, batch_size=b, epochs=1, verbose=0, shuffle=False)
        step_rate = len(images) / (time.perf_counter() - start)
        rows.append(("train step (" + args.backend + ", " + args.preset + ")", step_rate))
    has_tf = data.sources._has_tensorflow()  # the package's own test for tf.data
    if has_tf:
        rows.append(("default data, tf.data", rate(source.dataset(b, backend="tf"), b, 60)))
    rows.append(("default data, numpy PyDataset", rate(source.dataset(b, backend="numpy"), b, 60)))

    jb = args.jpeg_batch
    steps = max(2, args.jpegs // jb - 1)
    per_core = {}
    with tempfile.TemporaryDirectory() as tmp:
        size = write_jpegs(tmp, args.jpegs)
        folder = data.from_directory(tmp, image_size=224, channels="rgb", labels=None)
        paths = [("tf.io in tf.data", lambda: folder.dataset(jb, decoder="tf", backend="tf")),
                 ("PIL in tf.data", lambda: folder.dataset(jb, decoder="pil", backend="tf")),
                 ("PIL, numpy PyDataset", None)]
        for name, make in paths if has_tf else paths[-1:]:
            if make is None:
                one = rate(data.sources.UInt8Batches(folder, jb, lambda s: folder.batch_indices(
                    jb, 0, s), 0, workers=1), jb, steps)
                every = rate(folder.dataset(jb, backend="numpy", workers=os.cpu_count()), jb, steps)
            else:
                one = rate(single_threaded(make()), jb, steps)
                every = rate(make(), jb, steps)
            per_core[name] = one
            rows.append((f"JPEG -> 224, {name}, 1 core", one))
            rows.append((f"JPEG -> 224, {name}, {os.cpu_count()} cores", every))
    print(f"{platform.machine()}, {os.cpu_count()} cores; JPEGs {args.jpegs} x "
          f"{size / 1e3:.0f} kB average (300-420 x 330-480 px), batch {jb}; small data batch {b}")
    if not has_tf:
        print("TensorFlow is not installed: the tf.data rows are left out")
    for name, value in rows:
        ratio = (f"  ({value / step_rate:.1f}x the train step)"
                 if step_rate and not name.startswith("train") and "JPEG" not in name else "")
        print(f"{name:<44} {value:>10.0f} images/s{ratio}")
    preset = kc.PRESETS["vit_base_p16_224"]
    gpu_rate = args.gpu_tflops * 1e12 / step_flops(preset["config"], preset["projector"])
    print(f"one GPU's ViT-B/16 224 step at {args.gpu_tflops:.0f} TFLOP/s: {gpu_rate:,.0f} images/s "
          "-> cores of this machine it needs for decoding alone:")
    for name, one in per_core.items():
        print(f"  {name:<24} {gpu_rate / one:6.1f} cores ({one:.0f} images/s per core)")


if __name__ == "__main__":
    main()
