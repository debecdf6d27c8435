#!/usr/bin/env bash
# One short GPU check: the CUDA tests, then LeNet-5 on cnnxp/CuPy against PyTorch CUDA
# and against cnnxp on the CPU (batch 256 and 1024), printed as one table.
#
#   scripts/check_gpu.sh            # results under $OUT (default /tmp/cnnxp-gpu)
#   QUICK=1 scripts/check_gpu.sh    # fewer, shorter rounds
#
# Exit status: non-zero when CuPy cannot reach a GPU or a CUDA test fails.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/cnnxp-gpu}
mkdir -p "$OUT"

# A machine without network: pure-Python dependencies it lacks (array-api-compat) can come as
# wheels in .whl/ (see docs/performance.md, "GPU").
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/cnnxp-site .whl/*.whl || exit 2
    export PYTHONPATH="/tmp/cnnxp-site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "import array_api_compat" 2>"$OUT/deps-error.txt"; then
    echo "array-api-compat is missing: pip install it, or put its wheel in .whl/" >&2
    exit 2
fi
if ! "$PY" -c "import cupy; assert cupy.cuda.runtime.getDeviceCount() > 0" 2>"$OUT/cupy-error.txt"; then
    echo "CuPy cannot reach a CUDA GPU here:" >&2
    cat "$OUT/cupy-error.txt" >&2
    exit 2
fi
"$PY" - <<'PY' | tee "$OUT/environment.txt"
import cupy, numpy
props = cupy.cuda.runtime.getDeviceProperties(0)
print("gpu:", props["name"].decode(), "| cupy", cupy.__version__, "| numpy", numpy.__version__)
try:
    import torch
    print("torch", torch.__version__, "cuda available:", torch.cuda.is_available())
except ImportError:
    print("torch: not installed (no PyTorch column)")
PY

echo "== CUDA tests (pytest -m cuda)"
"$PY" -m pytest -q -m cuda tests 2>&1 | tee "$OUT/pytest-cuda.txt"
tests_status=${PIPESTATUS[0]}

echo "== benchmark: cnnxp on CuPy vs PyTorch CUDA vs cnnxp on the CPU"
if [ -n "${QUICK:-}" ]; then rounds=(--rounds 3 --warmup 1 --round-seconds 0.2); else rounds=(--rounds 5 --warmup 2 --round-seconds 0.4); fi
"$PY" scripts/benchmark.py --device cuda --models lenet5 --batch-sizes 256,1024 --compare-cpu --no-loop \
    "${rounds[@]}" --json "$OUT/benchmark-gpu.json" 2>&1 | tee "$OUT/benchmark-gpu.txt"
bench_status=${PIPESTATUS[0]}

echo "== summary: tests exit $tests_status, benchmark exit $bench_status; files in $OUT"
[ "$tests_status" -eq 0 ] && [ "$bench_status" -eq 0 ]
