#!/usr/bin/env bash
# Every GPU check in one run, in order of priority, each stage started only while the time
# budget lasts (BUDGET_S, default 480 s, start-up included):
#   1. target: recipe vs hand loop, reference_large in bf16 + compile (the 4,400 samples/s goal)
#   2. the tests marked gpu (mixed precision, compile, CUDA graphs, no host sync in the step,
#      a GPU checkpoint resumed on the CPU)
#   3. a short bf16 training run of the default experiment, end to end through the CLI
#   4. recipe vs hand: CUDA graphs and bf16 eager on both reference models, compile on the small one
#   5. each speed technique off and on (host_sync, fused_adamw, channels_last, cudnn_benchmark) on
#      reference_large
#   6. recipe vs hand in fp32 and tf32 (both models), the large model with max-autotune, and the
#      compile ablation
# Writes JSON and logs under $OUT; prints one table of every benchmark row last (rows of a stage
# cut by the budget are kept: the benchmark prints each row as it finishes).
#   On a GPU machine without network access or Hydra: copy wheels of the missing dependencies
#   into .whl/ (installed with --no-deps; pytest must already be there), then: bash scripts/gpu_check.sh
# Environment: BUDGET_S, ROUNDS (5), STEPS (10), ROUND_SECONDS (0.6).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
BUDGET_S=${BUDGET_S:-480}
mkdir -p "$OUT"
: > "$OUT/stages.txt"
if [ -d .whl ] && ! python3 -c "import hydra" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
# The scripts import mtmm_train: from a plain checkout (no pip install), this folder's.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# From a plain checkout (no pip install), the package path mtmm_train.configs must exist.
[ -e mtmm_train/configs ] || ln -s ../configs mtmm_train/configs
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

# stage NAME MIN_SECONDS COMMAND...: run COMMAND under the time left, if at least MIN_SECONDS are.
stage() {
  local name=$1 need=$2 left=$((BUDGET_S - SECONDS))
  shift 2
  if [ "$left" -lt "$need" ]; then
    echo "== $name: skipped ($left s of the budget left, needs about $need)" | tee -a "$OUT/stages.txt"
    return
  fi
  echo "== $name (budget left: $left s)"
  local start=$SECONDS
  timeout "$left" bash -c '"$@"' _ "$@"  # timeout signals the stage's whole process group
  echo "== $name: exit $? after $((SECONDS - start)) s" | tee -a "$OUT/stages.txt"
}
bench() {  # bench TAG ARGS...: scripts/benchmark.py with the common settings; rows in $OUT/TAG.{txt,json}
  local tag=$1
  shift
  python3 scripts/benchmark.py --rounds "${ROUNDS:-5}" --steps "${STEPS:-10}" --round-seconds "${ROUND_SECONDS:-0.6}" \
    --warmup 3 --out /tmp/bench_runs --json "$OUT/$tag.json" "$@" 2>&1 | tee "$OUT/$tag.txt" | grep -v '^{'
}
tests() {
  python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"
}
default_run() {
  python3 -m mtmm_train trainer.precision=bf16 logger.progress_bar=false hydra.run.dir="$OUT/default_bf16" \
    > "$OUT/default_bf16.log" 2>&1
  local rc=$?
  tail -7 "$OUT/default_bf16.log"
  return $rc
}

export OUT ROUNDS STEPS ROUND_SECONDS
export -f bench tests default_run
stage "target: reference_large bf16+compile" 150 bench target --configs reference_large --modes bf16+compile
stage "tests marked gpu" 120 tests
stage "default experiment, bf16, CLI" 40 default_run
stage "CUDA graphs and bf16 eager" 120 bench graphs --configs reference_small reference_large \
  --modes bf16+cudagraphs bf16
stage "small model compiled" 60 bench small_compile --configs reference_small --modes bf16+compile
stage "ablations: host_sync fused_adamw channels_last cudnn_benchmark" 110 bench ablations --suite ablations \
  --configs reference_large --modes bf16 --techniques host_sync fused_adamw channels_last cudnn_benchmark
stage "fp32 and tf32" 120 bench fp32_tf32 --configs reference_small reference_large --modes fp32 tf32
stage "large model, max-autotune" 240 bench autotune --configs reference_large --modes bf16+autotune
stage "ablation: compile" 150 bench ablation_compile --suite ablations --configs reference_large --modes bf16 \
  --techniques compile

echo "== summary ($SECONDS s in all)"
cat "$OUT/stages.txt"
python3 scripts/gpu_summary.py "$OUT" | tee "$OUT/summary.txt"
