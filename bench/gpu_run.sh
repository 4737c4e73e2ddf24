#!/usr/bin/env bash
# One-shot GPU bench for issue 8: run ONCE on a lent H100/H200 (device tool), ~9 minutes at most.
#
#   device run:  command "bash bench/gpu_run.sh", carry ["bench/out/wheels"], timeout_s 580
#   (bench/out/ is git-ignored; put the diffusers wheel there first, see bench/RESULTS.md)
#
# Writes everything to $OUT/bench_gpu.txt (bench/out/ when $OUT is unset) and prints a short
# summary last. Each part has its own timeout inside one overall budget and the script goes on
# when a part fails or times out; every bench prints its rows as they finish, so a part cut
# short still leaves its finished rows in the log.
#
# CPU dry run of the whole script (tiny model, minutes):
#   DS360_BENCH_SIZE=tiny DS360_BENCH_DEVICE=cpu DS360_BENCH_VIEWS=8 DS360_BENCH_FAST_STEPS=2 \
#   DS360_BENCH_COMPILE_BACKEND=eager bash bench/gpu_run.sh
set -u
cd "$(dirname "$0")/.."

SIZE=${DS360_BENCH_SIZE:-sd15}
DEVICE=${DS360_BENCH_DEVICE:-cuda}
VIEWS=${DS360_BENCH_VIEWS:-32}
STEPS=${DS360_BENCH_STEPS:-3}
FAST_STEPS=${DS360_BENCH_FAST_STEPS:-20}
WPB=${DS360_BENCH_WPB:-4}
BACKEND=${DS360_BENCH_COMPILE_BACKEND:-inductor}
MEM_VIEWS=${DS360_BENCH_MEMORY_VIEWS:-8,16,32,64}
MEM_WPB=${DS360_BENCH_MEMORY_WPB:-1,4}
MEM_FP8_VIEWS=${DS360_BENCH_MEMORY_FP8_VIEWS:-32,64}
BUDGET=${DS360_BENCH_BUDGET_S:-530}   # whole script, seconds (device call: timeout_s 580)
PY=${PYTHON:-python3}
OUTDIR=${OUT:-bench/out}
mkdir -p "$OUTDIR"
LOG="$OUTDIR/bench_gpu.txt"
: >"$LOG"
export PYTHONUNBUFFERED=1
START=$(date +%s)

say() { echo "$*" | tee -a "$LOG"; }

# part NAME MAX_SECONDS CMD...: run with min(MAX, budget left - 5) seconds; never abort the script
part() {
  local name=$1 max=$2; shift 2
  local left=$((BUDGET - ($(date +%s) - START) - 5))
  local limit=$((max < left ? max : left))
  if [ "$limit" -lt 20 ]; then say "=== $name: skipped, budget spent"; return 0; fi
  say "=== $name (timeout ${limit}s, t=$(( $(date +%s) - START ))s): $*"
  timeout --signal=INT --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  say "=== $name: rc=$rc$([ $rc -eq 124 ] && echo ' (TIMED OUT)') after $(( $(date +%s) - START ))s total"
}

# diffusers is not in the GPU image: install the carried wheel (pure Python) if it is missing
if ! "$PY" -c "import diffusers" >/dev/null 2>&1; then
  if ls bench/out/wheels/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/ds360_site bench/out/wheels/*.whl >>"$LOG" 2>&1
    export PYTHONPATH=/tmp/ds360_site${PYTHONPATH:+:$PYTHONPATH}
  else
    say "diffusers missing and no wheel in bench/out/wheels (carry it): the benches will fail"
  fi
fi

part env 60 "$PY" -c "
import torch, diffusers, platform
print('python', platform.python_version(), 'torch', torch.__version__, 'diffusers', diffusers.__version__)
print('cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '-')
"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv >>"$LOG" 2>&1

BENCH=("$PY" -m bench --size "$SIZE" --device "$DEVICE" --views "$VIEWS" --steps "$STEPS"
       --fast-steps "$FAST_STEPS" --windows-per-batch "$WPB" --compile-backend "$BACKEND")
[ "$DEVICE" = cuda ] && BENCH+=(--dtype fp16) || BENCH+=(--threads 1)  # 1 thread: shared CPU boxes

# 1. eager variants: official schedule, the 20-step solver, cuDNN autotuning (about 1 min on an H200)
part eager 110 "${BENCH[@]}" --variants default,official,dpmpp_2m,cudnn_benchmark
# 2. regional compile (repeated blocks incl. the Style Fusion transformers) + the 20-step solver on it;
#    compile time is the warm-up column (one graph per block class x shape)
part compiled 190 "${BENCH[@]}" --variants default,compiled,compiled+dpmpp_2m
# 3. whole-call graphs replayed as CUDA graphs (scope="full", mode="reduce-overhead"), then without CUDA graphs
part cudagraphs 280 "${BENCH[@]}" --variants default,compiled_cudagraphs,compiled_cudagraphs+dpmpp_2m,compiled_full
# 4. peak VRAM table (measured 2026-11-26; rerun with DS360_BENCH_MEMORY=1 when the budget allows)
if [ "${DS360_BENCH_MEMORY:-0}" = 1 ]; then
  MEM=("$PY" -m bench --size "$SIZE" --device "$DEVICE" --memory-table
       --memory-views "$MEM_VIEWS" --memory-wpb "$MEM_WPB" --memory-fp8-views "$MEM_FP8_VIEWS" --memory-steps 1)
  [ "$DEVICE" = cuda ] && MEM+=(--dtype fp16) || MEM+=(--memory-dry-run --threads 1)
  part memory 110 "${MEM[@]}"
fi

say ""
say "=== summary (full log: $LOG)"
grep -E "^(# DiffStyle360|FLOP|fastest|speedup_vs|=== .*rc=|default |compiled|official |dpmpp_2m |unipc |euler |offload |channels_last |cudnn_benchmark |fp8 |resident |offload\+fp8 )" "$LOG" \
  | grep -v "^=== summary" | awk '!seen[$0]++' | tail -70
echo "total $(( $(date +%s) - START ))s"
exit 0
