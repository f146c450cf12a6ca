#!/usr/bin/env bash
# The GPU path on a CUDA machine in under 5 minutes: the CUDA tests (CUDA-graph replay equals
# eager, fp16 against fp32 on the bundled model, padding), then the benchmark on the GPU with
# fp16 weights, static shape buckets and CUDA graphs against the same pipeline without them
# and the transformers reference. Prints the README table and writes JSON.
#
#   bash scripts/setup.sh && bash scripts/gpu_check.sh [OUT_DIR]   # default OUT_DIR: gpu_check
set -euo pipefail

ROOT="$(CDPATH= cd -- "$(dirname "${BASH_SOURCE[0]}")/.." >/dev/null && pwd)"
OUT="${1:-$ROOT/gpu_check}"
cd "$ROOT"
# shellcheck disable=SC1091
source scripts/env.sh
mkdir -p "$OUT"

python - <<'PY' || { echo '[gpu_check] error: torch sees no CUDA device' >&2; exit 1; }
import torch
assert torch.cuda.is_available()
print(f'[gpu_check] {torch.cuda.get_device_name()}, torch {torch.__version__}, '
      f'CUDA {torch.version.cuda}')
PY

echo '[gpu_check] CUDA tests (graphs vs eager, fp16 vs fp32, padding) ...'
timeout 150 python -m pytest -q -rs test/test_static_shapes.py 2>&1 | tee "$OUT/tests.txt"

echo '[gpu_check] benchmark, fp16, 640x480, 5 instances for 5 phrases ...'
# torch = fp16 + static shapes + CUDA graphs (the default on CUDA); torch-eager = without them.
timeout 150 python -m clip_ros.tools.benchmark --device cuda --dtype float16 \
    --backends torch-eager --repeats 20 --instances-per-phrase 1 \
    --json "$OUT/benchmark_fp16.json" 2>&1 | grep -v '^WARNING' | tee "$OUT/benchmark_fp16.txt"
echo "[gpu_check] done: $OUT"
