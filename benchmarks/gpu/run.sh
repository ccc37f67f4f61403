#!/usr/bin/env bash
# The GPU benchmark in one command: installs its Python dependencies offline from the
# wheels beside it (benchmarks/gpu/wheels/, made by fetch_wheels.sh), then runs the
# end-to-end benchmark, the parity check and a real `factory generate` on the GPU, and
# writes everything under $OUT (default gpu-results/), then times `factory directions score`
# for 120 candidates. About 7 minutes on one H100.
#
#   bash benchmarks/gpu/run.sh
#   GENERATOR_BENCH=1 bash benchmarks/gpu/run.sh   # also generator-only rates per precision (+3 min)
#   FACTORY_SHARED=/path/to/shared bash benchmarks/gpu/run.sh   # also parity on the golden model
#   PARTS=e2e,encode,masks bash benchmarks/gpu/run.sh            # a subset (all: tests,e2e,encode,masks,parity,generate,directions)
#
# All parts take ~10 minutes; where one command may run at most 10 minutes, run it in two
# calls: PARTS=tests,e2e,encode,masks then PARTS=parity,generate,directions (same $OUT).
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
N="${N:-15360}"
FAST="${FAST:---dtype bf16 --channels-last --compile}"
step() { echo "== $*"; }
PARTS="${PARTS:-tests,e2e,encode,masks,parity,generate,directions}"
want() { case ",$PARTS," in *",$1,"*) return 0;; esac; return 1; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; echo "cpus $(nproc)"; python3 -c "import torch; print('torch', torch.__version__)"; } | tee "$OUT/machine.txt"

if want tests; then
  step "GPU tests (pytest -m gpu): CUDA masks/statistics, BigBiGAN on CUDA, a CUDA worker's shards per labelling mode"
  timeout 180 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_masks.py tests/test_bigbigan.py \
    tests/test_generate.py 2>&1 | tee "$OUT/gpu_tests.txt" | tail -6
fi

# End to end at batch 512, three variants: sync-free labelling (default on CUDA: 8 updates, no host
# check, unconverged batches redone) with PNG images, profiled on one shard (trace.json.gz for
# Perfetto, ops.txt, GPU busy share); the same with lossless WebP images (1.8x cheaper to encode
# on photos, benchmarks/encode_bench.py); and host-checked labelling (FACTORY_CC_ITERATIONS=0).
B="${B:-512}"
want e2e && for V in "auto png trace" "auto webp -" "0 png -"; do
  set -- $V; CC=$1; CODEC=$2; TAG="b${B}_cc${CC}_$CODEC"
  step "end to end, batch $B, FACTORY_CC_ITERATIONS=$CC, images $CODEC: BigBiGAN-128 random weights, $FAST -> masks, stats, encoding, shards, index, latents"
  TRACE=""; [ "$3" = trace ] && TRACE="--trace $OUT/trace_$TAG"
  FACTORY_CC_ITERATIONS=$CC timeout 150 python3 -m factory.cli bench --generator bigbigan --random-weights --n "$N" \
    --batch-size "$B" --shard-size 1024 --image-codec "$CODEC" $FAST $TRACE --json > "$OUT/e2e_$TAG.json" 2> "$OUT/e2e_$TAG.err"
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: d[k] for k in ('candidates_per_s','generator_images_per_s','batch_size','peak_memory_bytes','cc_iterations','cc_redo_batches','staged_run','stage_share','trace')})" "$OUT/e2e_$TAG.json" || tail -5 "$OUT/e2e_$TAG.err"
done

want encode && step "encoding cost per candidate on this host's CPU (one core), per image codec" && \
timeout 90 python3 benchmarks/encode_bench.py --n 64 --reps 3 --json "$OUT/encode.json" 2>&1 | tail -10

want masks && step "masks + statistics alone, batch 1024 images: host-checked vs sync-free labelling" && \
for K in "" "--cc-iterations 8"; do
  timeout 60 python3 benchmarks/masks_bench.py --device cuda --batch 1024 $K 2>&1 | tail -5
done | tee "$OUT/masks_bench.txt"

if want parity; then
  step "parity of the fast path with fp32 (random weights, 1024 candidates)"
  timeout 120 python3 benchmarks/gpu_parity.py --n 1024 --paths "bf16,bf16+cl+compile" --json "$OUT/parity_random.json" 2>&1 | tail -4
  if [ -n "${FACTORY_SHARED:-}" ]; then
    step "parity on the golden model"
    timeout 60 python3 benchmarks/gpu_parity.py --golden "$FACTORY_SHARED/reference/bigbigan/golden_small" \
      --paths "tf32,bf16,bf16+cl" --json "$OUT/parity_golden.json" 2>&1 | tail -5
  fi
fi

if want generate; then
  step "factory generate on a dask LocalCluster (one worker per GPU), 10,000 candidates"
  python3 -c "import numpy as np; v=np.random.default_rng(0).standard_normal(120).astype('float32'); np.save('/tmp/h.npy', v/np.linalg.norm(v))"
  rm -rf /tmp/gpu-ds
  ( time timeout 150 python3 -m factory.cli generate --generator bigbigan --random-weights $FAST --direction /tmp/h.npy \
      --n 10240 --shard-size 1024 --batch-size 512 --out /tmp/gpu-ds --quiet ) > "$OUT/generate.txt" 2>&1
  tail -5 "$OUT/generate.txt"
fi

if want directions; then
  step "directions score: 120 candidates, paper settings (steps 200, batch 4), shapes world at 128 px (issue 6)"
  timeout 240 python3 benchmarks/directions_bench.py time --k 120 --resolution 128 --device cuda > "$OUT/directions_time.json" 2> "$OUT/directions_time.err"
  tail -c 600 "$OUT/directions_time.json" || tail -3 "$OUT/directions_time.err"
fi
if [ -n "${GENERATOR_BENCH:-}" ]; then
  step "generator images/s per precision"
  timeout 300 python3 benchmarks/gpu_generator.py --json "$OUT/generator.json" 2>&1 | tail -14
fi
echo "done: results in $OUT"
