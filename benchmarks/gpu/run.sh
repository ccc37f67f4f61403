#!/usr/bin/env bash
# The GPU benchmark, as two commands of at most 8 minutes each (a lent GPU machine runs one
# command for at most 10 minutes). It installs its Python dependencies offline from the wheels
# beside it (benchmarks/gpu/wheels/, made beforehand by fetch_wheels.sh on a machine with PyPI),
# and writes everything it prints, and every result, under $OUT (default gpu-results/):
#
#   bash benchmarks/gpu/run.sh 1   # GPU tests, end to end x3 (trace), encoder and masks tables
#   bash benchmarks/gpu/run.sh 2   # parity with fp32, a real `factory generate`, same bytes run to run, directions
#
#   FACTORY_SHARED=/path/to/shared bash benchmarks/gpu/run.sh 2   # also parity on the golden model
#   GENERATOR_BENCH=1 PARTS=generator bash benchmarks/gpu/run.sh     # generator-only rates per precision
#   PARTS=e2e,encode bash benchmarks/gpu/run.sh                      # any subset of
#                                    tests,e2e,encode,masks,parity,generate,repeat,directions,generator
#
# Each step's timeout is cut to what is left of the command's budget (LIMIT_S, default 470 s),
# and a step that no longer fits is skipped with a line saying so, so a command never runs over.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-gpu-results}"; mkdir -p "$OUT"
case "${1:-}" in
  1) PARTS="${PARTS:-tests,e2e,encode,masks}"; LOG="$OUT/run1.log" ;;
  2) PARTS="${PARTS:-parity,generate,repeat,directions}"; LOG="$OUT/run2.log" ;;
  "") PARTS="${PARTS:-tests,e2e,encode,masks,parity,generate,repeat,directions}"; LOG="$OUT/run.log" ;;
  *) echo "usage: bash benchmarks/gpu/run.sh [1|2]" >&2; exit 2 ;;
esac
exec > >(tee -a "$LOG") 2>&1   # everything printed also comes back as a file
START=$(date +%s); LIMIT_S="${LIMIT_S:-470}"
# budget S: the smaller of S and the seconds left (0 when the step does not fit: skip it)
budget() { local left=$((LIMIT_S - ($(date +%s) - START))); [ "$left" -lt 20 ] && { echo 0; return; }; [ "$left" -lt "$1" ] && echo "$left" || echo "$1"; }
fits() { T=$(budget "$1"); [ "$T" -gt 0 ] || { echo "== skipped ($2): not enough of the ${LIMIT_S} s budget left"; return 1; }; }
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
want() { case ",$PARTS," in *",$1,"*) return 0;; esac; return 1; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; echo "cpus $(nproc)"; python3 -c "import torch; print('torch', torch.__version__)"; } | tee "$OUT/machine.txt"

if want tests; then
  step "GPU tests (pytest -m gpu): CUDA masks/statistics, BigBiGAN on CUDA, a CUDA worker's shards per labelling mode"
  fits 120 tests && timeout "$T" python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_masks.py tests/test_bigbigan.py \
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
  fits 110 "e2e $TAG" || continue
  FACTORY_CC_ITERATIONS=$CC timeout "$T" python3 -m factory.cli bench --generator bigbigan --random-weights --n "$N" \
    --batch-size "$B" --shard-size 1024 --image-codec "$CODEC" $FAST $TRACE --json > "$OUT/e2e_$TAG.json" 2> "$OUT/e2e_$TAG.err"
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: d[k] for k in ('candidates_per_s','generator_images_per_s','batch_size','peak_memory_bytes','cc_iterations','cc_redo_batches','staged_run','stage_share','trace')})" "$OUT/e2e_$TAG.json" || tail -5 "$OUT/e2e_$TAG.err"
done

want encode && step "encoding cost per candidate on this host's CPU (one core), per image codec" && fits 60 encode && \
timeout "$T" python3 benchmarks/encode_bench.py --n 64 --reps 3 --json "$OUT/encode.json" 2>&1 | tee "$OUT/encode.txt" | tail -10

want masks && step "masks + statistics alone, batch 1024 images: host-checked vs sync-free labelling" && \
for K in "" "--cc-iterations 8"; do
  fits 40 "masks $K" || continue
  timeout "$T" python3 benchmarks/masks_bench.py --device cuda --batch 1024 $K 2>&1 | tail -5
done | tee "$OUT/masks_bench.txt"

if want parity && fits 120 parity; then
  step "parity of the fast path with fp32 (random weights, 1024 candidates)"
  timeout "$T" python3 benchmarks/gpu_parity.py --n 1024 --paths "bf16,bf16+cl+compile" --json "$OUT/parity_random.json" 2>&1 | tail -4
  if [ -n "${FACTORY_SHARED:-}" ]; then
    step "parity on the golden model"
    fits 60 "golden parity" && timeout "$T" python3 benchmarks/gpu_parity.py --golden "$FACTORY_SHARED/reference/bigbigan/golden_small" \
      --paths "tf32,bf16,bf16+cl" --json "$OUT/parity_golden.json" 2>&1 | tail -5
  fi
fi

if want generate && fits 150 generate; then
  step "factory generate on a dask LocalCluster (one worker per GPU), 10,000 candidates"
  python3 -c "import numpy as np; v=np.random.default_rng(0).standard_normal(120).astype('float32'); np.save('/tmp/h.npy', v/np.linalg.norm(v))"
  rm -rf /tmp/gpu-ds
  ( time timeout "$T" python3 -m factory.cli generate --generator bigbigan --random-weights $FAST --direction /tmp/h.npy \
      --n 10240 --shard-size 1024 --batch-size 512 --out /tmp/gpu-ds --quiet ) > "$OUT/generate.txt" 2>&1
  tail -5 "$OUT/generate.txt"
fi

if want repeat && fits 150 repeat; then
  step "same bytes run to run on this GPU: one command twice (fp32 and $FAST), shard hashes compared, then verify --regenerate"
  python3 -c "import numpy as np; v=np.random.default_rng(0).standard_normal(120).astype('float32'); np.save('/tmp/h.npy', v/np.linalg.norm(v))"
  for P in "fp32:" "fast:$FAST"; do
    TAG=${P%%:*}; FLAGS=${P#*:}
    for RUN in a b; do
      rm -rf /tmp/rep-$TAG-$RUN
      timeout "$T" python3 -m factory.cli generate --generator bigbigan --random-weights $FLAGS --direction /tmp/h.npy \
        --n 2048 --shard-size 512 --batch-size 256 --workers 0 --out /tmp/rep-$TAG-$RUN --quiet > /dev/null 2>> "$OUT/repeat.err"
    done
    python3 -c "import json,sys; a,b=(json.load(open(f'/tmp/rep-{sys.argv[1]}-{r}/manifest.json')) for r in 'ab'); print(sys.argv[1], 'identical' if a['dataset_id']==b['dataset_id'] else 'DIFFERENT', a['dataset_id'], b['dataset_id'], list(a['platforms'].values()))" "$TAG" | tee -a "$OUT/repeat.txt"
    timeout 120 python3 -m factory.cli verify /tmp/rep-$TAG-a --regenerate 8 2>&1 | tail -1 | tee -a "$OUT/repeat.txt"
  done
fi

if want directions && fits 180 directions; then
  step "directions score: 120 candidates, paper settings (steps 200, batch 4), shapes world at 128 px (issue 6)"
  timeout "$T" python3 benchmarks/directions_bench.py time --k 120 --resolution 128 --device cuda > "$OUT/directions_time.json" 2> "$OUT/directions_time.err"
  tail -c 600 "$OUT/directions_time.json" || tail -3 "$OUT/directions_time.err"
fi
if [ -n "${GENERATOR_BENCH:-}" ] || want generator; then
  step "generator images/s per precision"
  fits 300 generator && timeout "$T" python3 benchmarks/gpu_generator.py --json "$OUT/generator.json" 2>&1 | tail -14
fi
echo "done in $(( $(date +%s) - START )) s: results in $OUT (this log: $LOG)"
