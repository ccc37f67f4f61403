#!/usr/bin/env bash
# The GPU benchmark as one command that fits a lent machine's lease (docs/performance.md):
#
#   bash benchmarks/gpu/run.sh                 # on the GPU machine: about 8 minutes (BUDGET=480 s)
#   REHEARSAL=1 bash benchmarks/gpu/run.sh     # on a CPU, tiny sizes (also the default without CUDA)
#
# Steps, in this order: wheels (install benchmarks/gpu/wheels/*.whl offline if present, then check
# wheels.txt + image.txt cover every import), e2e (recipe settings: WebP, sync-free, batch 512,
# shards of 1,024), trace (one shard, GPU busy share), parity (fast path vs fp32), generate (a real
# `factory generate` through the LocalCluster, sized to the time left), verify, encode, masks,
# tests (pytest -m gpu), repeat (same bytes run to run), directions, generator. Each step's timeout
# is cut to what is left of BUDGET; a step that no longer fits is skipped. Everything goes under
# $OUT (default: a new temporary folder): run.log, one file per step, and summary.txt, one line per
# step: NAME ran|skipped|failed and its key figure. PARTS=e2e,trace,... runs a subset.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$(mktemp -d -t factory-gpu-XXXX)}"; mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"; : > "$SUMMARY"
exec > >(tee -a "$OUT/run.log") 2>&1
START=$(date +%s); BUDGET="${BUDGET:-480}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WHEELS="${WHEELS:-benchmarks/gpu/wheels}"
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/factory-site "$WHEELS"/*.whl \
    && export PYTHONPATH="/tmp/factory-site:$PYTHONPATH" || { echo "wheels failed: pip install" > "$SUMMARY"; exit 1; }
fi
CUDA=$(python3 -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
REHEARSAL="${REHEARSAL:-$([ "$CUDA" = 1 ] && echo 0 || echo 1)}"
ALL=wheels,e2e,trace,parity,generate,verify,encode,masks,tests,repeat,directions,generator
PARTS="${PARTS:-$ALL}"
if [ "$REHEARSAL" = 1 ]; then   # tiny sizes: every step that runs without CUDA runs
  DEV=cpu; GEN="--generator shapes --resolution 64"; FAST=""; N=8; B=4; SHARD=4; PN=4; PARITY="--small"
else
  DEV=cuda; GEN="--generator bigbigan --random-weights"; FAST="${FAST:---dtype bf16 --channels-last --compile}"
  N="${N:-15360}"; B="${B:-512}"; SHARD=1024; PN=1024; PARITY=""
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
  echo "cpus $(nproc) rehearsal $REHEARSAL"; python3 -c "import torch; print('torch', torch.__version__)"; } | tee "$OUT/machine.txt"
left() { echo $((BUDGET - ($(date +%s) - START))); }
# step NAME MAX_S CUDA_ONLY: run s_NAME with T = min(MAX_S, time left); record the outcome
step() {
  local name=$1 max=$2 cuda_only=$3 t0 rc
  case ",$PARTS," in *",$name,"*) ;; *) return 0;; esac
  echo "== $name"
  if [ "$cuda_only" = 1 ] && [ "$CUDA" != 1 ]; then printf '%-10s skipped: no CUDA\n' "$name" >> "$SUMMARY"; return 0; fi
  T=$(left); [ "$T" -gt "$max" ] && T=$max
  if [ "$T" -lt 15 ]; then printf '%-10s skipped: %s s of the %s s budget left\n' "$name" "$(left)" "$BUDGET" >> "$SUMMARY"; return 0; fi
  t0=$(date +%s); KEY=""; "s_$name"; rc=$?
  if [ "$rc" = 0 ]; then printf '%-10s ran %ss: %s\n' "$name" $(( $(date +%s) - t0 )) "$KEY" >> "$SUMMARY"
  else printf '%-10s failed (exit %s%s) %ss: see %s\n' "$name" "$rc" "$([ "$rc" = 124 ] && echo ', timed out')" $(( $(date +%s) - t0 )) "$OUT/$name.*" >> "$SUMMARY"; fi
  tail -n 3 "$OUT/$name".* 2>/dev/null | tail -n 6
}
jget() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, d))" "$@"; }

s_wheels() {
  timeout "$T" python3 benchmarks/gpu/check_wheels.py --json "$OUT/wheels.json" > "$OUT/wheels.txt" 2>&1 || return
  timeout "$T" python3 -c "import importlib, pathlib, factory.cli, trainers.cli
for f in sorted(pathlib.Path('benchmarks').glob('*.py')): importlib.import_module('benchmarks.' + f.stem)" >> "$OUT/wheels.txt" 2>&1 || return
  KEY="$(tail -n 1 "$OUT/wheels.txt"); factory, trainers and every benchmark module import"
}
s_e2e() {
  timeout "$T" python3 -m factory.cli bench $GEN --n "$N" --batch-size "$B" --shard-size "$SHARD" --image-codec webp \
    --device $DEV $FAST --json > "$OUT/e2e.json" 2> "$OUT/e2e.err" || return
  KEY=$(jget "$OUT/e2e.json" "f'{candidates_per_s} candidates/s (generator {generator_images_per_s} images/s), batch {batch_size}, cc {cc_iterations}, peak {peak_memory_bytes/2**30:.1f} GiB, shares {stage_share}'")
}
s_trace() {
  timeout "$T" python3 -m factory.cli bench $GEN --n "$SHARD" --batch-size "$B" --shard-size "$SHARD" --image-codec webp \
    --device $DEV $FAST --trace "$OUT/trace" --json > "$OUT/trace.json" 2> "$OUT/trace.err" || return
  KEY=$(jget "$OUT/trace.json" "f\"GPU busy share {trace['gpu_busy_share']}, span {trace['span_s']} s, {trace['kernels']} kernels, shares {stage_share}\"")
}
s_parity() {
  timeout "$T" python3 benchmarks/gpu_parity.py $PARITY --device $DEV --n "$PN" --batch "$B" \
    --paths "$([ "$CUDA" = 1 ] && echo 'bf16,bf16+cl+compile' || echo bf16)" --json "$OUT/parity.json" > "$OUT/parity.txt" 2>&1 || return
  KEY=$(grep '^| bf16' "$OUT/parity.txt" | tr -s ' ' | paste -sd ';')
}
s_generate() {
  python3 -c "import numpy as np; v=np.random.default_rng(0).standard_normal(120).astype('float32'); np.save('$OUT/h.npy', v/np.linalg.norm(v))"
  local n=$N rate
  rate=$(jget "$OUT/e2e.json" "candidates_per_s" 2>/dev/null || echo 0)
  [ "$REHEARSAL" = 1 ] || n=$(python3 -c "r=float('$rate') or 20; print(max(1, min(100, int(r * ($T - 60) * 0.6 / $SHARD))) * $SHARD)")
  rm -rf "$OUT/ds"
  local dir="" where=""   # on CUDA: one worker per GPU (the default); rehearsal: one CPU worker
  if [ "$REHEARSAL" = 1 ]; then where="--device cpu --workers 1"; else dir="--direction $OUT/h.npy"; fi
  ( time timeout "$T" python3 -m factory.cli generate $GEN $FAST $dir --n "$n" --shard-size "$SHARD" --batch-size "$B" \
      $where --out "$OUT/ds" --quiet ) > "$OUT/generate.txt" 2>&1 || return
  KEY="$n candidates through the LocalCluster in $(grep real "$OUT/generate.txt" | tr -s ' \t' ' ')"
}
s_verify() {
  [ -f "$OUT/ds/manifest.json" ] || { echo "no dataset from generate" > "$OUT/verify.txt"; return 1; }
  timeout "$T" python3 -m factory.cli verify "$OUT/ds" --regenerate 2 --device $DEV > "$OUT/verify.txt" 2>&1 || return
  KEY=$(grep -m1 -E "^(PASS|FAIL)" "$OUT/verify.txt")  # the verdict (with --seed); the coverage line follows
}
s_encode() {
  timeout "$T" python3 benchmarks/encode_bench.py --n "$([ "$REHEARSAL" = 1 ] && echo 2 || echo 64)" --reps "$([ "$REHEARSAL" = 1 ] && echo 1 || echo 3)" \
    --json "$OUT/encode.json" > "$OUT/encode.txt" 2>&1 || return
  KEY="per codec ms/candidate in encode.txt"
}
s_masks() {
  local k
  for k in "" "--cc-iterations 8"; do
    timeout "$T" python3 benchmarks/masks_bench.py --device $DEV --batch "$([ "$REHEARSAL" = 1 ] && echo 4 || echo 1024)" \
      $([ "$REHEARSAL" = 1 ] && echo "--reps 1 --warmup 0") $k --json >> "$OUT/masks.json" 2>> "$OUT/masks.err" || return
  done
  KEY="host-checked and sync-free labelling in masks.json"
}
s_tests() {
  timeout "$T" python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_masks.py tests/test_bigbigan.py tests/test_generate.py \
    > "$OUT/tests.txt" 2>&1 || return
  KEY=$(tail -n 1 "$OUT/tests.txt")
}
s_repeat() {
  local p tag flags run n=2048 shard=512 b=256
  [ "$REHEARSAL" = 1 ] && { n=$N; shard=$SHARD; b=$B; }
  for p in "fp32:" "fast:$FAST"; do
    tag=${p%%:*}; flags=${p#*:}
    [ "$REHEARSAL" = 1 ] && [ "$tag" = fast ] && continue   # no fast path on the CPU
    for run in a b; do
      rm -rf "$OUT/rep-$tag-$run"
      timeout "$T" python3 -m factory.cli generate $GEN $flags --n "$n" --shard-size "$shard" --batch-size "$b" --device $DEV \
        --workers 0 --out "$OUT/rep-$tag-$run" --quiet > /dev/null 2>> "$OUT/repeat.err" || return
    done
    python3 -c "import json,sys; a,b=(json.load(open(f'$OUT/rep-{sys.argv[1]}-{r}/manifest.json')) for r in 'ab'); same=a['dataset_id']==b['dataset_id']; print(sys.argv[1], 'identical' if same else 'DIFFERENT', a['dataset_id']); sys.exit(0 if same else 3)" "$tag" >> "$OUT/repeat.txt" || return
  done
  KEY=$(paste -sd ';' "$OUT/repeat.txt")
}
s_directions() {
  timeout "$T" python3 benchmarks/directions_bench.py time --k 120 --resolution 128 --device cuda > "$OUT/directions.json" 2> "$OUT/directions.err" || return
  KEY=$(tail -c 200 "$OUT/directions.json" | tr '\n' ' ')
}
s_generator() {
  timeout "$T" python3 benchmarks/gpu_generator.py --json "$OUT/generator.json" > "$OUT/generator.txt" 2>&1 || return
  KEY="images/s per precision in generator.json"
}

step wheels 120 0
step e2e 150 0
step trace 90 0
step parity 90 0
step generate 240 0
step verify 60 0
step encode 40 0
step masks 40 0
step tests 120 1
step repeat 120 0
step directions 120 1
step generator 240 1
echo "done in $(( $(date +%s) - START )) s: results in $OUT"
cat "$SUMMARY"
