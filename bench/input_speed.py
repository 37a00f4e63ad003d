"""Input pipeline speed against the train step's, measured in one run.

    python bench/input_speed.py                      # JAX backend, default preset
    python bench/input_speed.py --backend torch --batch-size 64

Rates (images/s) printed:
- the train step of the default small preset (fit on uint8 batches; XLA on
  jax/tensorflow), the number the pipeline must outrun;
- the packaged default data through tf.data and through the numpy PyDataset;
- a folder of JPEG files (written from the packaged data, 2,000 images)
  through both paths: decode + resize per image on this machine's cores.
The target is pipeline >= 3x the train step.
"""

import argparse
import os
import sys
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("jax", "tensorflow", "torch"), default="jax")
    parser.add_argument("--preset", default="vit_mini_p4_28")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = args.backend
    sys.path.insert(0, ROOT)
    import keras
    import numpy as np
    from PIL import Image

    import keras_conmim as kc
    from keras_conmim import data

    b = args.batch_size
    source = data.load_default()
    model = kc.ConMIM.from_preset(args.preset, seed=0, total_steps=10_000)
    model.compile(optimizer="adamw", jit_compile=args.backend != "torch")
    images = source.batch(np.arange(b * args.steps) % len(source))
    model.fit(images[: 2 * b], batch_size=b, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(images, batch_size=b, epochs=1, verbose=0, shuffle=False)
    step_rate = len(images) / (time.perf_counter() - start)

    n = 60
    rows = [("train step (" + args.backend + ")", step_rate)]
    rows.append(("default data, tf.data", rate(source.dataset(b, backend="tf"), b, n)))
    rows.append(("default data, numpy PyDataset", rate(source.dataset(b, backend="numpy"), b, n)))
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(2000):
            Image.fromarray(source.images[i, ..., 0]).save(os.path.join(tmp, f"{i}.jpg"), quality=90)
        folder = data.from_directory(tmp, image_size=28, channels="gray", labels=None)
        rows.append(("JPEG folder, tf.data", rate(folder.dataset(b, backend="tf"), b, 25)))
        rows.append(("JPEG folder, numpy PyDataset", rate(folder.dataset(b, backend="numpy"), b, 25)))
    print(f"{os.cpu_count()} cores, preset {args.preset}, batch {b}")
    for name, value in rows:
        ratio = "" if name.startswith("train") else f"  ({value / step_rate:.1f}x the train step)"
        print(f"{name:<32} {value:>10.0f} images/s{ratio}")


if __name__ == "__main__":
    main()
