#!/usr/bin/env bash
# The GPU run behind the "GPU" section of benchmarks/RESULTS.md, in one call on a machine lent for minutes: one
# NVIDIA GPU with PyTorch and JAX installed (TensorFlow need not be; Keras 3 comes as wheels in .whl/ where the
# machine has none). Run from the repository root. Prints everything and keeps it in $OUT (default
# /tmp/unidl-gpu): log.txt, bench.md (`unidl bench --device cuda`), tests-<backends>.txt (pytest on the GPU).
# STAGES picks the stages (default: "parity overhead bench tests"); BENCH_ONLY passes --only to the bench.
set -u
OUT=${OUT:-/tmp/unidl-gpu}
STAGES=${STAGES:-parity overhead bench tests}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
# JAX takes 75% of the GPU's memory at its first use unless told not to: the bench's processes, the Keras-on-JAX
# subprocesses and the test workers each hold JAX beside torch
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false KERAS_BACKEND=${KERAS_BACKEND:-torch}
if ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
python3 -m unidl info | head -n 8
stage() { [[ " $STAGES " == *" $1 "* ]] && echo "== $1 ($(date -u +%T))"; }
if stage parity; then
    timeout "${PARITY_TIMEOUT:-90}" python3 -m unidl parity --model cnn --backends torch jax keras:torch keras:jax \
        --steps 3 | grep -v " yes$"
fi
if stage overhead; then
    timeout "${OVERHEAD_TIMEOUT:-60}" python3 -m benchmarks.step_overhead --device cuda
fi
if stage bench; then
    timeout "${BENCH_TIMEOUT:-300}" python3 -m unidl bench --device cuda --keep-going --out "$OUT/bench.md" \
        ${BENCH_ONLY:+--only "$BENCH_ONLY"}
fi
if stage tests; then
    # one run per backend: a CUDA device-side assert ends every later test of its process (torch and JAX share
    # the process's CUDA context), so each backend's failures are its own; SIGINT at the limit still prints them
    for backends in ${TEST_BACKENDS:-jax torch}; do
        UNIDL_TEST_BACKENDS=$backends timeout -s INT "${TEST_TIMEOUT:-60}" python3 -m pytest -q -n 8 \
            -p no:cacheprovider -o addopts="" --tb=no -rfE ${TESTS:-tests/test_training.py tests/test_precision.py \
            tests/optim tests/nn/test_layers.py tests/nn/test_conv_pool_norm.py} > "$OUT/tests-$backends.txt" 2>&1
        grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests-$backends.txt" | cut -c1-300
    done
fi
echo "== done ($(date -u +%T))"
