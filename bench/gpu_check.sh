#!/usr/bin/env bash
# bench/gpu_check.sh: everything a GPU machine must show about fastcifar, in one prepared run (<= 8 minutes on one
# H100), because GPU time is rare and the first GPU run found every guessed preset wrong.
#
#   bash bench/gpu_check.sh DATA_DIR OUT_DIR              # on the GPU machine
#   bash bench/gpu_check.sh --dry-run DATA_DIR OUT_DIR    # the same steps at toy sizes on a CPU (a test runs this)
#
# DATA_DIR holds cifar-10-batches-py/ (../shared/tools/cifar_parts.py moves it to a machine that only takes ~60 MB
# uploads). Needs python with torch and fastcifar's pure-Python dependencies; nothing is installed: fastcifar runs
# from this checkout (PYTHONPATH). DALI, onnxruntime-gpu and TensorRT may be absent: the steps that use them say
# "skipped: why" in their own output. Steps, each with its own time limit and log; a failed step is reported in
# the summary and the others still run:
#   1 tta-fast     bench/time_to_accuracy.py --preset fast, 3 seeds (goal: >= 94 % mean in <= 12 s of training)
#   2 tta-seed     bench/time_to_accuracy.py --preset seed, 1 seed (the 10-epoch study recipe on all 45k images)

#   3 compare      fastcifar compare --preset fast --seeds 1 --fractions 0.1,1.0 --if-no-weights stand-in (with the
#                  preset's lr grid: the per-arm learning-rate selection)
#   4 throughput   bench/train_throughput.py: bf16, batch 1024, NCHW and channels_last, eager and compiled
#   5 export       fastcifar export of the fast run (seed 0): ONNX + parity in ONNX Runtime
#   6 bench        fastcifar bench of the same run: torch fp32 (the reference) and bf16, torch-compiled bf16
#                  (CUDA graphs), onnxruntime (its provider, or why it fell back to the CPU)
#   7 loaders      bench/loaders.py: the tensor loader and, when DALI is installed, the DALI GPU pipeline (its
#                  cuda_stream path); without DALI the step says it skipped it
#   8 variants     the fast preset with one lever changed each (zero-init residual, lr 0.2, 20 epochs), 1 seed
#                  each, last because it matters least: the next preset change is a measurement, not a guess
# The steps run in this order inside one time budget (GPU_CHECK_BUDGET_S, default 480 s); a step never runs past
# what is left of it, and one that would get under 10 s is skipped and named in the summary.
# OUT_DIR (new or empty) receives at most 8 files: summary.md (also printed), tta-fast.json, tta-seed.json,
# compare-results.json, train-throughput.json, export.json, bench.json and work.tar.gz (every log, the compare
# report with its plots, each run's metrics and summary; no weights).
set -uo pipefail

dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
if [ $# -ne 2 ]; then
  echo "usage: bash bench/gpu_check.sh [--dry-run] DATA_DIR OUT_DIR" >&2
  exit 2
fi
data=$(cd "$1" 2>/dev/null && pwd) || { echo "Error: DATA_DIR $1 is not a directory" >&2; exit 2; }
out=$2
if [ ! -d "$data/cifar-10-batches-py" ]; then
  echo "Error: $data has no cifar-10-batches-py/ (unpack the data there first)" >&2
  exit 2
fi
if [ -e "$out" ] && { [ ! -d "$out" ] || [ -n "$(ls -A "$out")" ]; }; then
  echo "Error: OUT_DIR $out exists and is not an empty directory (nothing is overwritten)" >&2
  exit 2
fi
mkdir -p "$out" || { echo "Error: cannot create OUT_DIR $out" >&2; exit 2; }
out=$(cd "$out" && pwd)
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
work=$(mktemp -d "${TMPDIR:-/tmp}/fastcifar-gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
budget=${GPU_CHECK_BUDGET_S:-480}  # the whole check; a step never runs past what is left of it
deadline=$((SECONDS + budget))

if [ "$dry" = 1 ]; then
  # Toy sizes: the same commands, a few hundred images, the cheap ImageNet stem, no compile (minutes on a CPU).
  device=cpu
  tta_toy=(--set train_limit=240 --set epochs=2 --set batch_size=32 --set stem=imagenet --set compile=false)
  compare_toy=(--train-limit 400 --epochs 1 --batch-size 16 --stem imagenet --no-compile --lr-grid 0.05,0.1)
  throughput_args=(--batch-sizes 8 --precisions fp32 --steps 2 --warmup 1 --stem imagenet --no-compile
                   --layouts channels_last)
  export_toy=(--verify-images 64)
  bench_args=(--backends torch,torch:bf16,onnxruntime --batch-sizes 1,8 --min-time 0.05 --warmup 0.02
              --latency-iters 3 --max-images 64)
  limits=(240 120 300 60 120 120 150 60)
  loader_args=(--epochs 1 --batch-size 64)
else
  device=auto
  tta_toy=()
  compare_toy=()
  throughput_args=(--batch-sizes 1024 --precisions bf16)
  export_toy=()
  # fp32 eager is the parity reference; the goals (issue 12): torch-compiled bf16 >= 250k img/s at batch 1024,
  # <= 0.3 ms at batch 1, agreement >= 99.5 %; onnxruntime shows its provider (and a note if it fell back).
  bench_args=(--backends torch:fp32,torch:bf16,torch-compiled:bf16,onnxruntime --batch-sizes 1,256,1024)
  limits=(200 90 220 90 60 120 120 60)
  loader_args=(--epochs 3 --batch-size 512)
fi

printf 'step\trc\tseconds\n' > "$work/steps.tsv"
# run_step NAME LIMIT STDOUT_FILE COMMAND...: stderr goes to NAME.log; the step's rc and seconds to steps.tsv.
run_step() {
  local name=$1 limit=$2 stdout=$3 t0=$SECONDS left=$((deadline - SECONDS)) rc
  shift 3
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    echo "== $name: skipped (the ${budget}s budget is spent)" >&2
    printf '%s\tskipped\t0\n' "$name" >> "$work/steps.tsv"
    return
  fi
  echo "== $name (limit ${limit}s)" >&2
  timeout --kill-after=10 "$limit" "$@" > "$stdout" 2> "$work/$name.log"
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$work/steps.tsv"
  echo "   rc $rc after $((SECONDS - t0))s; last lines of $name.log:" >&2
  tail -n 3 "$work/$name.log" | sed 's/^/   | /' >&2
}

"$py" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda',
torch.cuda.is_available() and torch.cuda.get_device_name(0))" > "$work/env.txt" 2>&1
command -v nvidia-smi >/dev/null && nvidia-smi >> "$work/env.txt" 2>&1

run_step tta-fast "${limits[0]}" "$work/tta-fast.out" "$py" "$repo/bench/time_to_accuracy.py" --data-dir "$data" \
  --preset fast --seeds 3 --target 0.94 --device "$device" --runs-dir "$work/tta-fast" --out "$out/tta-fast.json" \
  "${tta_toy[@]}"
run_step tta-seed "${limits[1]}" "$work/tta-seed.out" "$py" "$repo/bench/time_to_accuracy.py" --data-dir "$data" \
  --preset seed --seeds 1 --target 0.90 --device "$device" --runs-dir "$work/tta-seed" --out "$out/tta-seed.json" \
  "${tta_toy[@]}"
run_step compare "${limits[2]}" "$out/compare-results.json" "$py" -m fastcifar compare --data-dir "$data" \
  --no-download --preset fast --seeds 1 --fractions 0.1,1.0 --if-no-weights stand-in --device "$device" \
  --out "$work/compare" --json "${compare_toy[@]}"
run_step throughput "${limits[3]}" "$work/throughput.out" "$py" "$repo/bench/train_throughput.py" \
  --device "$device" --out "$out/train-throughput.json" "${throughput_args[@]}"
run_step export "${limits[4]}" "$out/export.json" "$py" -m fastcifar export "$work/tta-fast/seed0" \
  --out "$work/exported" --data-dir "$data" --json "${export_toy[@]}"
run_step bench "${limits[5]}" "$out/bench.json" "$py" -m fastcifar bench --model "$work/tta-fast/seed0" \
  --data-dir "$data" --no-download --device "$device" --results-dir "$work/bench" --name gpu-check \
  --cache-dir "$work/cache" --json "${bench_args[@]}"

run_step loaders "${limits[7]}" "$work/loaders.out" bash -c '
  py=$1; shift
  if "$py" -c "import nvidia.dali" 2>/dev/null; then kinds=(tensor dali); else
    echo "DALI is not installed: the DALI GPU loader is skipped (pip install nvidia-dali-cuda130)" >&2; kinds=(tensor); fi
  "$py" "$@" --loaders "${kinds[@]}"' _ "$py" "$repo/bench/loaders.py" --data-dir "$data" --device "$device" \
  --out "$work/loaders.json" "${loader_args[@]}"
variants=("zero_init_residual=true" "lr=0.2" "epochs=20")
mkdir -p "$work/variants"
run_step variants "${limits[6]}" "$work/variants.out" bash -c '
  py=$1 repo=$2 data=$3 device=$4 work=$5; shift 5
  toy=(); while [ "$1" != "--" ]; do toy+=("$1"); shift; done; shift
  for v in "$@"; do
    "$py" "$repo/bench/time_to_accuracy.py" --data-dir "$data" --preset fast --seeds 1 --target 0.94 \
      --device "$device" --out "$work/variants/${v%%=*}.json" "${toy[@]}" --set "$v" || exit 1
  done' _ "$py" "$repo" "$data" "$device" "$work" "${tta_toy[@]}" -- "${variants[@]}"
"$py" "$repo/bench/gpu_check_summary.py" "$out" "$work/steps.tsv" "$work/env.txt" "$work/variants" \
  "$work/loaders.json" > "$out/summary.md"
for f in "$out"/*.json; do  # a step that died before printing leaves an empty file: keep the count honest
  [ -s "$f" ] || rm -f "$f"
done
cp "$work/steps.tsv" "$work/env.txt" "$out/summary.md" "$work/" 2>/dev/null
tar -czf "$out/work.tar.gz" -C "$work" --exclude='*.pt' --exclude='*.pth' --exclude='*.safetensors' \
  --exclude='*.onnx' --exclude='*.engine' --exclude='cache' .
cat "$out/summary.md"
# Exit 0 when every step ran and exited 0; 1 otherwise (the summary names the failed steps).
awk -F'\t' 'NR > 1 && $2 != "0" { bad = 1 } END { exit bad }' "$work/steps.tsv"
