#!/usr/bin/env bash
# The GPU path on a CUDA machine in under 5 minutes: the CUDA tests (CUDA-graph replay equals
# eager, fp16 against fp32 on the bundled model, padding), then the benchmark on the GPU with
# fp16 weights, static shape buckets and CUDA graphs against the same pipeline without them
# and the transformers reference. Prints the README table and writes JSON.
#
#   bash scripts/gpu_check.sh [OUT_DIR]   # default OUT_DIR: gpu_check
#
# With a .venv (scripts/setup.sh) it runs there. Without one (a bare CUDA machine, maybe
# offline) it runs the sources of this checkout with the python3 that holds a CUDA torch
# (PYTHON=... to choose another); the packages that interpreter lacks (usually
# open_clip_torch, ftfy and wcwidth) can come as wheel files in .whl/ (CLIP_ROS_WHEELS=DIR for
# another folder), installed without an index into a temporary folder. Every step runs even
# when one before it failed; the exit status is non-zero if any failed.
set -uo pipefail

ROOT="$(CDPATH= cd -- "$(dirname "${BASH_SOURCE[0]}")/.." >/dev/null && pwd)"
OUT="${1:-$ROOT/gpu_check}"
cd "$ROOT"
mkdir -p "$OUT" || exit 1

if [ -f "$ROOT/.venv/bin/activate" ]; then
    # shellcheck disable=SC1091
    source scripts/env.sh || exit 1
    PY=python
else
    PY="${PYTHON:-python3}"
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
    export MPLBACKEND=Agg
    WHEELS="${CLIP_ROS_WHEELS:-$ROOT/.whl}"
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        SITE="$(mktemp -d)"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --target "$SITE" "$WHEELS"/*.whl \
            || { echo "[gpu_check] error: cannot install the wheels in $WHEELS" >&2; exit 1; }
        export PYTHONPATH="$SITE:$PYTHONPATH"
    fi
fi
# The tests keep CUDA hidden (test/conftest.py) unless asked for it.
export CLIP_ROS_TEST_CUDA=1

"$PY" - <<'PY' || exit 1
import importlib.util
import sys

import torch
if not torch.cuda.is_available():
    sys.exit('[gpu_check] error: torch sees no CUDA device')
missing = [m for m in ('open_clip', 'transformers', 'ftfy', 'regex', 'hypothesis', 'pytest')
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f'[gpu_check] error: {sys.executable} lacks {", ".join(missing)}: run '
             'scripts/setup.sh, or put their wheel files in .whl/ (see the top of this script)')
print(f'[gpu_check] {torch.cuda.get_device_name()}, torch {torch.__version__}, '
      f'CUDA {torch.version.cuda}')
PY

failed=()
echo '[gpu_check] CUDA tests (graphs vs eager, fp16 vs fp32, padding) ...'
timeout 150 "$PY" -m pytest -c pytest.ini --rootdir . -q -rs -p no:cacheprovider \
    test/test_static_shapes.py 2>&1 | tee "$OUT/tests.txt"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then
    failed+=("CUDA tests (exit $rc)")
elif grep -q 'no CUDA device here' "$OUT/tests.txt"; then
    failed+=('CUDA tests (skipped: no CUDA device in the tests)')
fi

echo '[gpu_check] benchmark, fp16, 640x480, 5 instances for 5 phrases ...'
# torch = fp16 + static shapes + CUDA graphs (the default on CUDA); torch-eager = without them.
timeout 150 "$PY" -m clip_ros.tools.benchmark --device cuda --dtype float16 \
    --backends torch-eager --repeats 20 --instances-per-phrase 1 \
    --json "$OUT/benchmark_fp16.json" 2>&1 | grep -v '^WARNING' | tee "$OUT/benchmark_fp16.txt"
rc=${PIPESTATUS[0]}
[ "$rc" -eq 0 ] || failed+=("benchmark (exit $rc)")

if [ "${#failed[@]}" -gt 0 ]; then
    printf '[gpu_check] failed: %s\n' "${failed[@]}" >&2
    echo "[gpu_check] outputs: $OUT" >&2
    exit 1
fi
echo "[gpu_check] done: $OUT"
