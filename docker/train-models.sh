#!/bin/sh
# Train the demo's two models when they are missing: docker-compose.yml's one-shot `train` service runs this
# before the demo starts, so `docker compose up -d` works on a fresh checkout. tests/test_docker_files.py runs it
# on the CPU at smoke size.
#
# For each model, the pretrained one first (a missing ImageNet weights file then fails in seconds, before any
# training), in its run directory:
#   finished (summary.json says "status": "finished")  -> skipped
#   interrupted (config.json, not finished)             -> fastcifar train --resume DIR  (its own options)
#   missing or empty                                    -> fastcifar train --preset $PRESET --init ... --out DIR
# The first failure stops the script with fastcifar's one-line `Error:` message and a non-zero exit status; the
# compose file does not restart it and the demo does not start.
#
# Settings, from the environment (the defaults are what the compose file runs on the GPU):
#   PRESET=seed            preset of a new run: the original study's 10-epoch recipe (README.md, "The original study")
#   WEIGHTS=imagenet       --init of the pretrained model: imagenet = torchvision's IMAGENET1K_V1 download (cached
#                          under $TORCH_HOME), or a torchvision-format state dict file such as
#                          data/resnet18-f37072fd.pth for a machine that cannot download it
#   PRETRAINED=runs/pretrained, SCRATCH=runs/scratch
#                          the two run directories (the demo's --pretrained and --scratch)
#   TRAIN_OPTIONS=         more `fastcifar train` options for both new runs, split on blanks, e.g.
#                          "--stem imagenet --image-size 224"; a resumed run keeps the options it started with
#   FASTCIFAR=fastcifar    the command to run
set -eu

PRESET=${PRESET:-seed}
WEIGHTS=${WEIGHTS:-imagenet}
PRETRAINED=${PRETRAINED:-runs/pretrained}
SCRATCH=${SCRATCH:-runs/scratch}
TRAIN_OPTIONS=${TRAIN_OPTIONS:-}
FASTCIFAR=${FASTCIFAR:-fastcifar}

say() { echo "train-models: $*"; }

# fastcifar's own test (fastcifar/train/loop.py is_finished): summary.json exists and says "status": "finished".
finished() {
    python3 -c 'import json, sys
try:
    status = json.load(open(sys.argv[1])).get("status")
except (OSError, ValueError, AttributeError):
    status = None
sys.exit(0 if status == "finished" else 1)' "$1/summary.json"
}

# train_one NAME DIR INIT: skip, resume or start one model.
train_one() {
    name=$1 dir=$2 init=$3
    if [ -f "$dir" ]; then
        say "$name: $dir is a model file, not a run directory: nothing to train"
    elif finished "$dir"; then
        say "$name: $dir already finished, skipped"
    elif [ -f "$dir/config.json" ]; then
        say "$name: $dir is unfinished, resuming: $FASTCIFAR train --resume $dir"
        "$FASTCIFAR" train --resume "$dir"
    else
        say "$name: training into $dir: $FASTCIFAR train --preset $PRESET --init $init --out $dir $TRAIN_OPTIONS"
        set -f  # TRAIN_OPTIONS is split on blanks, never glob-expanded
        # shellcheck disable=SC2086
        "$FASTCIFAR" train --preset "$PRESET" --init "$init" --out "$dir" $TRAIN_OPTIONS
        set +f
    fi
}

train_one pretrained "$PRETRAINED" "$WEIGHTS"
train_one scratch "$SCRATCH" random
say "both models are ready: $PRETRAINED and $SCRATCH"
