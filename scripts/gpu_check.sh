#!/usr/bin/env bash
# Every GPU check in one run (scarce device time): the tests marked gpu, a short bf16 training
# run of the default experiment, and the recipe-vs-hand benchmark of the reference models in
# fp32, tf32, bf16 and bf16+compile. Writes JSON and logs under $OUT; prints a table last.
#   On the device machine (no network, no Hydra): carry .whl/ (../shared/device/fetch-wheels.sh
#   ; the image has pytest) and run: bash scripts/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if [ -d .whl ] && ! python3 -c "import hydra" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
# From a plain checkout (no pip install), the package path mtmm_train.configs must exist.
[ -e mtmm_train/configs ] || ln -s ../configs mtmm_train/configs
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

echo "== tests marked gpu"
python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"

echo "== bf16 training run of the default experiment"
start=$SECONDS
python3 -m mtmm_train trainer.precision=bf16 logger.progress_bar=false hydra.run.dir="$OUT/default_bf16" \
  > "$OUT/default_bf16.log" 2>&1
echo "exit $? in $((SECONDS - start)) s" | tee -a "$OUT/default_bf16.log"
tail -7 "$OUT/default_bf16.log"

echo "== benchmark: recipe vs hand loop on the reference models"
python3 scripts/benchmark.py --configs reference_small reference_large --modes ${MODES:-fp32 tf32 bf16 bf16+compile bf16+cudagraphs} \
  --rounds ${ROUNDS:-5} --steps ${STEPS:-10} --round-seconds ${ROUND_SECONDS:-0.6} --warmup 3 --out /tmp/bench_runs \
  --json "$OUT/benchmark.json" 2>&1 | tee "$OUT/benchmark.txt" | grep -v '^{'
echo "== each speed technique off and on (host_sync, fused_adamw, channels_last, compile)"
python3 scripts/benchmark.py --suite ablations --configs ${ABLATE_CONFIGS:-reference_large} --modes bf16 \
  --techniques ${TECHNIQUES:-host_sync fused_adamw channels_last compile} \
  --rounds ${ROUNDS:-5} --steps ${STEPS:-10} --round-seconds ${ROUND_SECONDS:-0.6} --warmup 3 --out /tmp/bench_runs \
  --json "$OUT/ablations.json" 2>&1 | tee "$OUT/ablations.txt" | grep -v '^{' 
