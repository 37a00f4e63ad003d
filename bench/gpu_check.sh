#!/usr/bin/env bash
# The GPU figures README's "Measured speed" still owes, in one run on a GPU
# machine that has JAX and torch (CUDA) but neither Keras nor TensorFlow:
#   0. the compile report of that step on JAX, compiled for the GPU: XLA's
#      FLOPs against the analytic count, memory, the largest batch in 80 GB,
#      host transfers (bench/compile_report.py);
#   1. the ConMIM train step of ViT-B/16 at 224 px, bf16, batch 128, on JAX
#      (XLA) with the views + masking share and both attention paths, and on
#      torch eager (both paths) and under torch.compile: images/s, TFLOP/s
#      and MFU against --peak-tflops (989: H100 / H200 SXM dense bf16);
#   2. the input pipeline without TensorFlow (the numpy PyDataset; JPEG -> 224
#      on one core and on all), and how many such cores that GPU's step needs.
#
# Here, with PyPI reachable, once:  bash bench/gpu_check.sh --fetch
#   puts Keras (this machine's version) and the two libraries it needs that
#   such a machine lacks (namex, optree) into .whl/ as wheels for CPython
#   3.12 (.gitignore keeps .whl/ out of git; the device tool carries it).
# There (carry .whl):               bash bench/gpu_check.sh
#   prints everything and keeps a copy in $OUT/gpu_check.txt (./gpu_check.txt
#   without $OUT). A failing step is reported and the next one still runs.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch" ]; then
    keras_version=$(python3 -c "import importlib.metadata as m; print(m.version('keras'))") || exit 1
    exec python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "keras==$keras_version" namex optree
fi
if ! ls .whl/keras-*.whl > /dev/null 2>&1; then
    echo "no .whl/keras-*.whl: run 'bash bench/gpu_check.sh --fetch' where PyPI is reachable," \
         "then carry .whl" >&2
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu_check_site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/gpu_check_site:$PWD PYTHONUNBUFFERED=1
log=${OUT:-.}/gpu_check.txt

step() {  # a title, then the command; its status is printed, the run goes on
    echo "=== $1"
    shift
    "$@"
    echo "=== exit status $?"
}

{
    step "machine" nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    step "python, jax, torch, keras" python3 -c "import sys, jax, torch, keras; \
print(sys.version.split()[0], 'jax', jax.__version__, jax.devices(), 'torch', torch.__version__, \
torch.cuda.get_device_name(0), 'keras', keras.__version__)"
    step "compile report, jax, ViT-B/16 224, bf16, batch 128 (compiled for this GPU)" \
        python3 bench/compile_report.py --device-gib 80
    step "train step, jax, ViT-B/16 224, bf16, batch 128, fused and manual attention" \
        python3 bench/step_speed.py --backend jax --preset vit_base_p16_224 \
        --precision mixed_bfloat16 --batch-size 128 --steps 20 --peak-tflops 989 \
        --views-share --attention both
    step "train step, torch eager, ViT-B/16 224, bf16, batch 128, fused and manual" \
        python3 bench/step_speed.py --backend torch --preset vit_base_p16_224 \
        --precision mixed_bfloat16 --batch-size 128 --steps 20 --peak-tflops 989 --attention both
    step "train step, torch.compile, ViT-B/16 224, bf16, batch 128, fused" \
        python3 bench/step_speed.py --backend torch --preset vit_base_p16_224 \
        --precision mixed_bfloat16 --batch-size 128 --steps 20 --peak-tflops 989 --torch-compile
    step "input pipeline, no TensorFlow" python3 bench/input_speed.py --backend jax \
        --skip-step --jpegs 800
} 2>&1 | tee "$log"
