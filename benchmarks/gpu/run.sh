#!/usr/bin/env bash
# The GPU benchmark in one command: installs its Python dependencies offline from the
# wheels beside it (benchmarks/gpu/wheels/, made by fetch_wheels.sh), runs the GPU tests,
# the generator benchmark, the parity check and the end-to-end benchmark, and writes
# everything under $OUT (default gpu-results/).
#
#   bash benchmarks/gpu/run.sh            # full run (about 6 minutes on one H100)
#   QUICK=1 bash benchmarks/gpu/run.sh    # shorter end-to-end runs
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-gpu-results}"; mkdir -p "$OUT"
WHEELS="${WHEELS:-benchmarks/gpu/wheels}"
export PYTHONUNBUFFERED=1
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/factory-site "$WHEELS"/*.whl \
    && export PYTHONPATH="/tmp/factory-site:$PWD" || exit 1
else
  export PYTHONPATH="$PWD"
fi
N="${N:-30000}"; [ -n "${QUICK:-}" ] && N=8000
step() { echo "== $*"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; nproc; python3 -c "import torch; print('torch', torch.__version__)"; } | tee "$OUT/machine.txt"

step "GPU tests"
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_bigbigan.py tests/test_masks.py 2>&1 | tail -5 | tee "$OUT/pytest_gpu.txt"

step "generator images/s per precision (batch 256; fastest again at 512)"
timeout 200 python3 benchmarks/gpu_generator.py --json "$OUT/generator.json" 2>&1 | tail -20 | tee "$OUT/generator.txt"

step "parity of the fast paths with fp32 (masks, filter decisions)"
timeout 150 python3 benchmarks/gpu_parity.py --n 1024 --paths "bf16,bf16+cl+compile" --json "$OUT/parity.json" 2>&1 | tail -8 | tee "$OUT/parity.txt"

step "end to end: BigBiGAN-128 random weights -> masks, stats, PNG, shards, index, latents"
for B in 256 512; do
  timeout 200 python3 -m factory.cli bench --generator bigbigan --random-weights --n "$N" --batch-size "$B" \
    --shard-size 1000 --dtype bf16 --channels-last --compile --json > "$OUT/e2e_bf16_compile_b$B.json" 2> "$OUT/e2e_b$B.err"
  tail -c 1500 "$OUT/e2e_bf16_compile_b$B.json"; echo; tail -3 "$OUT/e2e_b$B.err"
done
echo "done: results in $OUT"
