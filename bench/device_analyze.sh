#!/usr/bin/env bash
# bench/analyze.py on a lent GPU machine (no TensorFlow there): the bundled .keras model runs on
# the JAX backend. Wheels for CPython 3.12 travel in build/device-wheels (see README, Benchmarks):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_28_x86_64 -d build/device-wheels keras namex optree h5py rich ...
# Usage (on the device, from the repository root): bash bench/device_analyze.sh OUT_DIR [ARGS]
set -euo pipefail
out=${1:?output folder}; shift
vendor=$(mktemp -d)
python3 -m pip install --quiet --no-index --no-deps --target "$vendor" build/device-wheels/*.whl
export PYTHONPATH="$vendor:$PWD" KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false
python3 - <<'PY'
import jax, keras, platform
print("python", platform.python_version(), "keras", keras.__version__, "backend", keras.backend.backend(), "devices", jax.devices())
PY
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 bench/analyze.py --json "$out/analyze-gpu.json" "$@"
