#!/usr/bin/env bash
# One GPU check: the CUDA tests (pytest -m cuda: tests/test_cuda.py, the backend matrix's CuPy
# entries, and tests/test_distributed.py's GPU cases: NCCL with one process, two processes sharing
# cuda:0 through MPI, which need mpi4py and mpiexec), then scripts/gpu_benchmark.py (LeNet-5 and
# the fashion preset, batch 256 and 1024: cnnxp on CuPy against PyTorch CUDA and cnnxp on the CPU,
# TF32 off), then a short summary.
#
#   scripts/check_gpu.sh            # results under $OUT (default /tmp/cnnxp-gpu): at most 6 files
#   QUICK=1 scripts/check_gpu.sh    # fewer, shorter benchmark rounds
#
# Files: environment.txt, pytest-cuda.txt, gpu-benchmark.txt, gpu-benchmark.json, summary.txt, and
# setup-error.txt when the machine lacks what it needs. Time limits (seconds): TESTS_TIMEOUT (default
# 360), BENCH_TIMEOUT (default 420, 240 with QUICK=1).
# Exit status: 2 when CuPy cannot reach a GPU or a dependency is missing; 1 when a CUDA test fails
# or the benchmark fails (or runs out of time); 0 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/cnnxp-gpu}
mkdir -p "$OUT"
# Full float32 in cuBLAS on the CuPy side (CuPy's default; TF32 would put the CUDA tests' comparisons
# with NumPy outside float32 tolerances); the benchmark sets it again before importing CuPy.
export CUPY_TF32=0
setup_error=$(mktemp)
if ! command -v timeout >/dev/null; then timeout() { shift; "$@"; }; fi  # coreutils' timeout, where there is one
trap 'rm -f "$setup_error"' EXIT

# A machine without network: pure-Python dependencies it lacks (array-api-compat) can come as
# wheels in .whl/ (see docs/performance.md, "GPU").
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/cnnxp-site .whl/*.whl || exit 2
    export PYTHONPATH="/tmp/cnnxp-site${PYTHONPATH:+:$PYTHONPATH}"
    export PATH="/tmp/cnnxp-site/bin:$PATH"  # MPICH's wheel brings mpiexec
fi
if ! "$PY" -c "import array_api_compat" 2>"$setup_error"; then
    cp "$setup_error" "$OUT/setup-error.txt"
    echo "array-api-compat is missing: pip install it, or put its wheel in .whl/" >&2
    exit 2
fi
if ! "$PY" -c "import cupy; assert cupy.cuda.runtime.getDeviceCount() > 0" 2>"$setup_error"; then
    cp "$setup_error" "$OUT/setup-error.txt"
    echo "CuPy cannot reach a CUDA GPU here:" >&2
    cat "$setup_error" >&2
    exit 2
fi
"$PY" - <<'PY' | tee "$OUT/environment.txt"
import os, platform
import cupy, numpy
props = cupy.cuda.runtime.getDeviceProperties(0)
print("gpu:", props["name"].decode(), "| GPUs:", cupy.cuda.runtime.getDeviceCount(),
      "| cupy", cupy.__version__, "| CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(),
      "| numpy", numpy.__version__, "| python", platform.python_version(),
      "| CUPY_TF32", os.environ.get("CUPY_TF32"))
try:
    import torch
    print("torch", torch.__version__, "cuda available:", torch.cuda.is_available(), "| torch CUDA", torch.version.cuda)
except ImportError:
    print("torch: not installed (no PyTorch rows)")
PY

echo "== CUDA tests (pytest -m cuda)"
start=$SECONDS
timeout "${TESTS_TIMEOUT:-360}" "$PY" -m pytest -q -rs -p no:cacheprovider -m cuda tests 2>&1 | tee "$OUT/pytest-cuda.txt"
tests_status=${PIPESTATUS[0]}
tests_seconds=$((SECONDS - start))

echo "== benchmark: cnnxp on CuPy vs PyTorch CUDA vs cnnxp on the CPU"
quick=()
bench_timeout=${BENCH_TIMEOUT:-420}
if [ -n "${QUICK:-}" ] && [ "${QUICK}" != 0 ]; then quick=(--quick); bench_timeout=${BENCH_TIMEOUT:-240}; fi
start=$SECONDS
timeout "$bench_timeout" "$PY" scripts/gpu_benchmark.py --device cuda ${quick[@]+"${quick[@]}"} \
    --json "$OUT/gpu-benchmark.json" 2>&1 | tee "$OUT/gpu-benchmark.txt"
bench_status=${PIPESTATUS[0]}
bench_seconds=$((SECONDS - start))

{
    echo
    echo "== summary ($OUT)"
    printf '%-12s %-8s %6s  %s\n' "part" "exit" "time" "result"
    printf '%-12s %-8s %5ss  %s\n' "CUDA tests" "$tests_status" "$tests_seconds" \
        "$(grep -E '[0-9]+ (passed|failed|errors?|skipped|deselected)|no tests ran' "$OUT/pytest-cuda.txt" | tail -n 1)"
    printf '%-12s %-8s %5ss  %s\n' "benchmark" "$bench_status" "$bench_seconds" \
        "$(grep -E '^total [0-9]+ s' "$OUT/gpu-benchmark.txt" | tail -n 1)"
    grep -E "^SKIPPED" "$OUT/pytest-cuda.txt" | sort | uniq -c | head -n 5
    [ "$tests_status" -eq 124 ] && echo "the CUDA tests ran out of time (TESTS_TIMEOUT=${TESTS_TIMEOUT:-360})"
    [ "$bench_status" -eq 124 ] && echo "the benchmark ran out of time (BENCH_TIMEOUT=$bench_timeout)"
    sed -n '/^== results/,/^operations per step/p' "$OUT/gpu-benchmark.txt"
} | tee "$OUT/summary.txt"

[ "$tests_status" -eq 0 ] && [ "$bench_status" -eq 0 ] && exit 0
exit 1
