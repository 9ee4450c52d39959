#!/usr/bin/env bash
# The GPU checks of issue 17 in one run, in the issue's order of priority, each stage started only while
# the time budget lasts (BUDGET_S, default 540 s: a device session has 15 minutes in all, machine start-up
# included, and one command at most 600 s). Estimates on an H100 in brackets; stages that do not fit are
# skipped and named, so a second run can take them (STAGES="5 6 7").
#   1. backbone_reference (ViT-B/16 + BERT-base + MLP, 3 tasks) in bf16 + compile: recipe vs hand loop
#      over the same GPU-resident data, with MFU (goal: ratio >= 0.97)                            [~150 s]
#   2. the same model from files (a JPEG + text manifest generated here, timed): GPU-resident vs
#      DataLoader workers vs GPU JPEG decoding (goal: >= 0.9x the GPU-resident figure)             [~120 s]
#   3. the tests marked gpu: tests/test_gpu.py (bf16 LoRA step, frozen-cache epoch, precision, compile,
#      CUDA graphs, host syncs) and tests/test_device_decode.py (a GPU-decoded batch)              [~90 s]
#   4. reference_large in bf16 + compile (goal: >= 5,000 samples/s on an H100)                    [~100 s]
#   5. the frozen-feature cache at GPU size (ViT-B/16 + BERT-base): extraction samples/s, epoch time
#      from the cache against recomputing                                                          [~90 s]
#   6. peak CUDA memory and step time per fine-tuning choice at GPU size (frozen, frozen + cache,
#      LoRA, full, full + gradient checkpointing; batch 64, 224 px, 128 tokens), one process each  [~150 s]
#   7. the default experiment through the CLI in bf16                                              [~40 s]
# Writes logs and JSON under $OUT (each benchmark row as it finishes, so a stage cut by the budget keeps
# the rows it made) and prints last one table of every issue item's figure against its goal
# (scripts/gpu_summary.py). Runs from a plain checkout, no pip install: on a GPU machine without network
# access or Hydra, the wheels of scripts/gpu_wheels.sh in .whl/ are installed to /tmp/site first (with
# --no-deps; pytest must already be there). See docs/gpu.md.
#   bash scripts/gpu_check.sh
# Environment: BUDGET_S (540), STAGES ("1 2 3 4 5 6 7"), ROUNDS (5), STEPS (10), ROUND_SECONDS (0.6),
# FILES_ROWS (2048: rows of the generated manifest), OUT (/tmp/gpu_check), GPU_CHECK_SMOKE=1: every stage
# shrunk to tiny models on the CPU (bf16 without compile, the CPU variants of the tests), to check the
# script itself on a machine without a GPU (5-11 minutes on 2 busy cores; BUDGET_S 900 there).
# Settings come from the environment only: --help prints the comment above, any argument is refused.
case "${1-}" in
  -h|--help) sed -n '2,/^# Settings come from/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "$(basename "$0"): error: it takes no arguments, found '$1'; set its environment variables instead (--help)" >&2
     exit 2 ;;
esac
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
SMOKE=${GPU_CHECK_SMOKE:-0}
BUDGET_S=${BUDGET_S:-$([ "$SMOKE" = 1 ] && echo 900 || echo 540)}
STAGES=${STAGES:-1 2 3 4 5 6 7}
FILES_ROWS=${FILES_ROWS:-2048}
mkdir -p "$OUT"
: > "$OUT/stages.txt"
if [ -d .whl ] && ! python3 -c "import hydra" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# The scripts import mtmm_train: from a plain checkout (no pip install), this folder's.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1  # nothing may download
# From a plain checkout (no pip install), the package path mtmm_train.configs must exist.
[ -e mtmm_train/configs ] || ln -s ../configs mtmm_train/configs
if command -v nvidia-smi >/dev/null && [ "$SMOKE" != 1 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
else
  echo "cpu (GPU_CHECK_SMOKE=$SMOKE: no GPU figures)" | tee "$OUT/gpu.txt"
fi
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

# Per-stage settings. The smoke mode keeps every command and shrinks what it runs.
MODE=bf16+compile
REF_OVERRIDES=()         # backbone_reference (stages 1, 2)
LARGE_OVERRIDES=()       # reference_large (stage 4)
CACHE_ARGS=(--configs vit_b16+bert_base --rounds 3 --override trainer.precision=bf16
            trainer.float32_matmul_precision=high)
TUNE_ARGS=(--configs vit_b16+bert_base --rounds 1 --steps 5 --warmup 2 --override trainer.precision=bf16
           trainer.float32_matmul_precision=high)
TEST_ARGS=(-m gpu tests/test_gpu.py tests/test_device_decode.py)
FILES_ARGS=(--batches 20)
DEFAULT_OVERRIDES=()
if [ "$SMOKE" = 1 ]; then
  export CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  MODE=bf16 ROUNDS=2 STEPS=2 ROUND_SECONDS=0 FILES_ROWS=${GPU_CHECK_SMOKE_ROWS:-64}
  tiny_hf() {  # tiny_hf M: a 1-layer, width-64 Hugging Face model for encoder M
    local m=model.encoders.$1.config
    echo "$m.num_hidden_layers=1 $m.hidden_size=64 $m.num_attention_heads=2 $m.intermediate_size=128"
  }
  # shellcheck disable=SC2207  # the words are overrides without spaces
  REF_OVERRIDES=(dataset.num_train=64 dataset.num_val=32 dataset.image_size=32 dataset.text_length=16
                 trainer.batch_size=16 trainer.eval_batch_size=16 model.encoders.image.config.image_size=32
                 $(tiny_hf image) $(tiny_hf text) model.encoders.text.max_length=16 model.encoders.vector.out_dim=64
                 'model.encoders.vector.hidden_dims=[64]' 'mtl.hidden_dims=[64]')
  LARGE_OVERRIDES=(dataset.num_train=32 dataset.num_val=16 dataset.image_size=16 dataset.text_length=16
                   trainer.batch_size=8 trainer.eval_batch_size=8 model.encoders.text.num_layers=1
                   'model.encoders.image.channels=[8,8,8]')
  CACHE_ARGS=(--configs vit_tiny+text --rounds 1 --override dataset.image_size=32 model.encoders.image.model_name=test_vit)
  TUNE_ARGS=(--configs vit_tiny+bert --choices frozen+cache lora full --rounds 1 --steps 1 --warmup 0 --override
             dataset.image_size=32 model.encoders.image.model_name=test_vit dataset.num_train=16 trainer.batch_size=8
             trainer.eval_batch_size=8)
  TEST_ARGS=(-m "not gpu" tests/test_gpu.py)  # the CPU variants of the same checks
  FILES_ARGS=(--batches 2 --workers 1 --image-size 40 40 64 64)
  DEFAULT_OVERRIDES=(trainer.max_epochs=1 trainer.limit_train_batches=3)
fi

# stage N NAME MIN_SECONDS COMMAND...: run COMMAND under the time left, if stage N is in STAGES and at
# least MIN_SECONDS are left.
stage() {
  local number=$1 name=$2 need=$3 left=$((BUDGET_S - SECONDS))
  shift 3
  case " $STAGES " in *" $number "*) ;; *) echo "== $number. $name: not in STAGES" | tee -a "$OUT/stages.txt"; return ;; esac
  if [ "$left" -lt "$need" ]; then
    echo "== $number. $name: skipped ($left s of the budget left, needs about $need)" | tee -a "$OUT/stages.txt"
    return
  fi
  echo "== $number. $name (budget left: $left s)"
  local start=$SECONDS
  timeout "$left" bash -c '"$@"' _ "$@"  # timeout signals the stage's whole process group
  echo "== $number. $name: exit $? after $((SECONDS - start)) s" | tee -a "$OUT/stages.txt"
}
bench() {  # bench TAG ARGS...: scripts/benchmark.py with the common settings; rows in $OUT/TAG.{txt,json}
  local tag=$1
  shift
  set -o pipefail  # the stage's exit status is the benchmark's
  python3 scripts/benchmark.py --rounds "${ROUNDS:-5}" --steps "${STEPS:-10}" --round-seconds "${ROUND_SECONDS:-0.6}" \
    --warmup 3 --out /tmp/bench_runs --json "$OUT/$tag.json" "$@" 2>&1 | tee "$OUT/$tag.txt" | { grep -v '^{' || true; }
}
tests() {
  set -o pipefail
  python3 -m pytest -q -p no:cacheprovider "$@" 2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"
}
default_run() {
  python3 -m mtmm_train trainer.precision=bf16 logger.progress_bar=false hydra.run.dir="$OUT/default_bf16" "$@" \
    > "$OUT/default_bf16.log" 2>&1
  local rc=$?
  tail -7 "$OUT/default_bf16.log"
  return $rc
}

export OUT ROUNDS STEPS ROUND_SECONDS
export -f bench tests default_run
stage 1 "backbone_reference $MODE: recipe vs hand, MFU" 150 bench backbone_reference --configs backbone_reference \
  --modes "$MODE" --override "${REF_OVERRIDES[@]}"
stage 2 "backbone_reference from files ($FILES_ROWS rows): GPU-resident, workers, GPU decoding" 120 bench files \
  --suite files --configs backbone_reference --modes "$MODE" --rows "$FILES_ROWS" "${FILES_ARGS[@]}" \
  --override "${REF_OVERRIDES[@]}"
stage 3 "tests marked gpu" 90 tests "${TEST_ARGS[@]}"
stage 4 "reference_large $MODE (the 5,000 samples/s goal)" 100 bench reference_large --configs reference_large \
  --modes "$MODE" --override "${LARGE_OVERRIDES[@]}"
stage 5 "frozen-feature cache at GPU size: extraction, epoch cached vs recomputed" 90 bench feature_cache \
  --suite feature_cache "${CACHE_ARGS[@]}"
stage 6 "fine-tuning memory and step time at GPU size" 150 bench finetune --suite finetune "${TUNE_ARGS[@]}"
stage 7 "default experiment, bf16, CLI" 40 default_run "${DEFAULT_OVERRIDES[@]}"

echo "== summary ($SECONDS s in all)"
cat "$OUT/stages.txt"
python3 scripts/gpu_summary.py "$OUT" | tee "$OUT/summary.txt"
