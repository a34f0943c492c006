#!/usr/bin/env bash
# bench/gpu_check.sh: what a GPU machine must show about fastcifar, in one prepared run that fits its time budget
# (GPU_CHECK_BUDGET_S, default 480 s), because GPU time comes rarely and ~15 minutes at a time.
#
#   bash bench/gpu_check.sh DATA_DIR OUT_DIR              # on the GPU machine
#   bash bench/gpu_check.sh --dry-run DATA_DIR OUT_DIR    # every step at toy sizes on a CPU (tests/test_gpu_check.py)
#
# DATA_DIR holds cifar-10-batches-py/ (../shared/tools/cifar_parts.py moves it in <= 64 MiB parts). fastcifar runs
# from this checkout (PYTHONPATH); nothing is downloaded. Wheels staged in .device-wheels/ (pytest and its
# dependencies, DALI in `split` parts named WHEEL.part-aa, -ab, ...: bench/README.md says how; GPU_CHECK_WHEELS
# names another folder) are joined and installed with pip --no-index --no-deps before the first step; without them
# the steps that need them say why they skipped.
#
# Steps, in order of value; each gets a fixed share of the budget as its time limit, so the limits add up to no
# more than the budget and a slow step can only eat its own share. A step killed by its limit keeps what it wrote:
#   step         share  what it measures                                                        writes (OUT_DIR)
#   setup          3 %  installs the staged wheels                                              -
#   gpu-tests     10 %  pytest -m gpu: CUDA training, EMA, export parity, CUDA-graph serving    gpu-tests.xml
#                       from worker threads, DALI-vs-tensor pixels when DALI imports
#   sweep         36 %  bench/sweep.py over bench/variants/gpu.json: the fast preset and the    sweep.jsonl (a line
#                       issue-18 levers, seeds in one process (the next preset is a measurement)  per finished run)
#   bench         18 %  fastcifar bench of the sweep's first run: torch fp32 (the reference),   bench.jsonl (a line
#                       bf16, torch-compiled bf16 (CUDA graphs) at batch 1, 256, 1024            per backend)
#   export         7 %  fastcifar export of that run: ONNX + parity in ONNX Runtime             export.json
#   throughput     9 %  bench/train_throughput.py: bf16, batch 1024, layouts x eager/compiled   throughput.jsonl
#   seed-preset   12 %  the `seed` preset (the study's 10 epochs) on all 45k images, 1 seed     sweep.jsonl
#   loaders        5 %  bench/loaders.py: the tensor loader, and DALI's GPU pipeline if it imports  loaders.json
#                       (with DALI also bench/folder_decode.py: nvJPEG on a JPEG folder vs a     (work.tar.gz:
#                       torchvision DataLoader)                                                   folder-decode.json)
# `fastcifar compare` is not run: with stand-in weights (no ImageNet download there) its pretrained arm and its lr
# choice mean nothing, and its ~200 s would push the serving bench out of the budget.
# OUT_DIR (new or empty) receives at most 8 files: the six above, summary.md (rewritten after every step, so even
# a check killed from outside leaves one; printed at the end) and work.tar.gz (logs, env.json, the run summaries
# and metrics; no weights). SIGTERM/SIGINT stop the running step, mark it "killed" and still write both.
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
py=${PYTHON:-python3}
if ! "$py" -c "import torch, click, numpy" 2>/dev/null; then
  echo "Error: $py cannot import torch, click and numpy; point PYTHON at an interpreter that has them" >&2
  exit 2
fi
mkdir -p "$out" || { echo "Error: cannot create OUT_DIR $out" >&2; exit 2; }
out=$(cd "$out" && pwd)
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
work=$(mktemp -d "${TMPDIR:-/tmp}/fastcifar-gpu-check.XXXXXX")
budget=${GPU_CHECK_BUDGET_S:-480}
deadline=$((SECONDS + budget))
steps=(setup gpu-tests sweep bench export throughput seed-preset loaders)
shares=(3 10 36 18 7 9 12 5)  # percent of the budget, in the order above; they sum to 100
declare -A limit
for i in "${!steps[@]}"; do limit[${steps[$i]}]=$((budget * shares[i] / 100)); done

if [ "$dry" = 1 ]; then
  # Toy sizes: the same commands on a few hundred images, the cheap ImageNet stem, no compile.
  device=cpu
  variants=$repo/bench/variants/dry-run.json
  toy=(--set train_limit=240 --set epochs=2 --set batch_size=32 --set stem=imagenet --set compile=false
       --set lr=0.05 --set warmup_epochs=0.4 --set val_fraction=0.1)
  bench_args=(--backends torch,torch:bf16 --batch-sizes 1,8 --min-time 0.05 --warmup 0.02 --latency-iters 3
              --max-images 64)
  export_args=(--verify-images 64)
  throughput_args=(--batch-sizes 8 --precisions fp32 --steps 2 --warmup 1 --stem imagenet --no-compile
                   --layouts channels_last)
  loader_args=(--epochs 1 --batch-size 64)
  decode_args=(--per-class 10 --size 40 --batch 32 --workers 0 --repeats 1)
else
  device=auto
  variants=$repo/bench/variants/gpu.json
  toy=()
  # fp32 eager is the parity reference; the goals (issue 12): torch-compiled bf16 >= 250k img/s at batch 1024,
  # <= 0.3 ms at batch 1, agreement >= 99.5 %. --min-time 0.5 s per size keeps three backends inside the step.
  bench_args=(--backends torch:fp32,torch:bf16,torch-compiled:bf16 --batch-sizes 1,256,1024 --min-time 0.5
              --warmup 0.3 --latency-iters 50)
  export_args=()
  throughput_args=(--batch-sizes 1024 --precisions bf16 --layouts channels_last,nchw)  # the default layout first
  loader_args=(--epochs 3 --batch-size 512)
  decode_args=(--per-class 500 --size 96 --batch 256 --workers 8)  # 16 cores there: the DataLoader gets 8
fi

printf 'step\trc\tseconds\tlimit\tnote\n' > "$work/steps.tsv"
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$work/steps.tsv"; }

summarize() {  # summary.md from what OUT_DIR and the work dir hold now; atomic, so a kill never leaves half of it
  "$py" "$repo/bench/gpu_check_summary.py" "$out" "$work" > "$work/summary.tmp" 2> "$work/summary.log" &&
    mv "$work/summary.tmp" "$out/summary.md"
}

pack() {  # logs and records, never weights
  cp "$out/summary.md" "$work/" 2>/dev/null
  tar -czf "$out/work.tar.gz" -C "$work" --exclude='*.pt' --exclude='*.pth' --exclude='*.safetensors' \
    --exclude='*.onnx' --exclude='*.engine' --exclude='*.plan' --exclude='cache' --exclude='site' . 2>/dev/null
}

step_pid="" current=""
on_signal() {
  if [ -n "$step_pid" ]; then
    kill -TERM "$step_pid" 2>/dev/null
    wait "$step_pid" 2>/dev/null
    record "$current" killed "$((SECONDS - step_t0))" "${limit[$current]}" "stopped by a signal"
  fi
  echo "== gpu_check: stopped by a signal; OUT_DIR keeps every step finished so far" >&2
  summarize
  pack
  rm -rf "$work"
  exit 143
}
trap on_signal TERM INT
trap 'rm -rf "$work"' EXIT

# run_step NAME STDOUT_FILE COMMAND...: stderr goes to NAME.log, rc/seconds to steps.tsv, then summary.md is redone.
# The command runs in the background and is waited for, so a signal reaches on_signal at once.
run_step() {
  local name=$1 stdout=$2 lim=${limit[$1]} left=$((deadline - SECONDS)) rc
  shift 2
  [ "$left" -lt "$lim" ] && lim=$left
  if [ "$lim" -lt 5 ]; then
    echo "== $name: skipped (the ${budget}s budget is spent)" >&2
    record "$name" skipped 0 "$lim" "budget spent"
    summarize
    return
  fi
  echo "== $name (limit ${lim}s)" >&2
  current=$name step_t0=$SECONDS
  timeout --kill-after=5 "$lim" "$@" > "$stdout" 2> "$work/$name.log" &
  step_pid=$!
  wait "$step_pid"
  rc=$?
  step_pid=""
  local note=""
  [ "$rc" = 124 ] && note="cut by its ${lim}s limit; what it wrote before stays"
  record "$name" "$rc" "$((SECONDS - step_t0))" "$lim" "$note"
  echo "   rc $rc after $((SECONDS - step_t0))s; last lines of $name.log:" >&2
  tail -n 3 "$work/$name.log" | sed 's/^/   | /' >&2
  summarize
}

skip_step() {  # skip_step NAME WHY
  echo "== $1: skipped ($2)" >&2
  record "$1" skipped 0 "${limit[$1]}" "$2"
  summarize
}

# ---------------------------------------------------------------------------------------------- the machine
"$py" -c "import json, sys; from fastcifar.runtime import env_info; json.dump(env_info(sys.argv[1:]), sys.stdout,
indent=1)" gpu_check > "$work/env.json" 2> "$work/env.log"
command -v nvidia-smi >/dev/null && nvidia-smi > "$work/nvidia-smi.txt" 2>&1

# ---------------------------------------------------------------------------------------------- 1 setup
stage_wheels() {  # join split wheels, then install every staged wheel without touching the network
  local dir=${GPU_CHECK_WHEELS:-$repo/.device-wheels} part
  for part in "$dir"/*.whl.part-aa; do
    [ -e "$part" ] || continue
    cat "${part%.part-aa}".part-* > "$work/$(basename "${part%.part-aa}")"
  done
  cp "$dir"/*.whl "$work/" 2>/dev/null
  local small=() large=() w
  for w in "$work"/*.whl; do  # pytest's small wheels first: a cut DALI install must not cost the gpu tests
    [ -e "$w" ] || continue
    if [ "$(stat -c %s "$w")" -lt 20000000 ]; then small+=("$w"); else large+=("$w"); fi
  done
  [ ${#small[@]} -gt 0 ] || [ ${#large[@]} -gt 0 ] || { echo "no wheels staged in $dir"; return 0; }
  local group
  for group in small large; do
    local -n set=$group
    [ ${#set[@]} -gt 0 ] || continue
    "$py" -m pip install --no-index --no-deps -q "${set[@]}" ||
      "$py" -m pip install --no-index --no-deps -q --break-system-packages "${set[@]}" || return 1
  done
}
if [ "$dry" = 1 ]; then
  record setup 0 0 "${limit[setup]}" "dry run: nothing is installed"
else
  export -f stage_wheels
  run_step setup "$work/setup.out" env repo="$repo" work="$work" py="$py" bash -c stage_wheels
fi

# ---------------------------------------------------------------------------------------------- 2 gpu-tests
# Only the files that hold gpu-marked tests are collected: quicker, and a test file importing what the GPU machine
# lacks (gradio, playwright) cannot stop the run.
mapfile -t gpu_files < <(grep -l "pytest.mark.gpu" "$repo"/tests/test_*.py)
if "$py" -c "import pytest" 2>/dev/null; then
  run_step gpu-tests "$work/gpu-tests.out" "$py" -m pytest -m gpu -q -rA -p no:cacheprovider \
    --rootdir "$repo" -c "$repo/setup.cfg" --continue-on-collection-errors --junitxml "$out/gpu-tests.xml" \
    "${gpu_files[@]}"
else
  skip_step gpu-tests "pytest is not installed: stage its wheels in .device-wheels (bench/README.md)"
fi

# ---------------------------------------------------------------------------------------------- 3 sweep
run_step sweep "$work/sweep.md" "$py" "$repo/bench/sweep.py" --data-dir "$data" --variants "$variants" \
  --jsonl "$out/sweep.jsonl" --device "$device" --runs-dir "$work/runs" "${toy[@]}"

# The model the serving steps use: the sweep's first finished run (its weights stay in the work dir).
model=$("$py" -c "import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get('status') == 'finished':
        print(r['run_dir']); break" "$out/sweep.jsonl" 2>/dev/null)

# ---------------------------------------------------------------------------------------------- 4 bench, 5 export
if [ -n "$model" ]; then
  run_step bench "$work/bench.json" "$py" -m fastcifar bench --model "$model" --data-dir "$data" --no-download \
    --device "$device" --results-dir "$work/bench" --name gpu-check --cache-dir "$work/cache" \
    --jsonl "$out/bench.jsonl" --json "${bench_args[@]}"
  run_step export "$out/export.json" "$py" -m fastcifar export "$model" --out "$work/exported" --data-dir "$data" \
    --json "${export_args[@]}"
else
  skip_step bench "no finished sweep run to serve"
  skip_step export "no finished sweep run to export"
fi

# ---------------------------------------------------------------------------------------------- 6 throughput
run_step throughput "$work/throughput.out" "$py" "$repo/bench/train_throughput.py" --device "$device" \
  --jsonl "$out/throughput.jsonl" --out "$work/throughput.json" "${throughput_args[@]}"

# ---------------------------------------------------------------------------------------------- 7 seed preset
run_step seed-preset "$work/seed-preset.md" "$py" "$repo/bench/sweep.py" --data-dir "$data" \
  --variants "$repo/bench/variants/seed.json" --jsonl "$out/sweep.jsonl" --device "$device" \
  --runs-dir "$work/runs" "${toy[@]}"

# ---------------------------------------------------------------------------------------------- 8 loaders
kinds=(tensor)
if "$py" -c "import nvidia.dali" 2>/dev/null; then kinds+=(dali); else
  echo "DALI does not import: its GPU pipeline is not measured (stage its wheel: bench/README.md)" > "$work/dali.txt"
fi
loaders_cmd=("$py" "$repo/bench/loaders.py" --data-dir "$data" --device "$device" --out "$out/loaders.json"
             --loaders "${kinds[@]}" "${loader_args[@]}")
decode_cmd=()  # with DALI: an image folder decoded by DALI (nvJPEG) vs a torchvision DataLoader -> work.tar.gz
[[ " ${kinds[*]} " == *" dali "* ]] && decode_cmd=("$py" "$repo/bench/folder_decode.py" --data-dir "$data"
  --device "$device" --json "$work/folder-decode.json" "${decode_args[@]}")
# One step, two commands: the loaders' figures first (loaders.json), then the folder decode if DALI imports.
run_step loaders "$work/loaders.out" bash -c 'n=$1; shift; "${@:1:n}" || exit; shift "$n"; [ $# -eq 0 ] || "$@"' \
  loaders-step "${#loaders_cmd[@]}" "${loaders_cmd[@]}" "${decode_cmd[@]}"

for f in "$out"/*.json "$out"/*.jsonl "$out"/*.xml; do  # a step that died before writing leaves an empty file
  [ -e "$f" ] && [ ! -s "$f" ] && rm -f "$f"
done
summarize
pack
cat "$out/summary.md"
# Exit 0 when every step ran and exited 0; 1 otherwise (the summary names the failed, cut and skipped steps).
awk -F'\t' 'NR > 1 && $2 != "0" { bad = 1 } END { exit bad }' "$work/steps.tsv"
