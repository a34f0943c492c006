#!/usr/bin/env bash
# bench/gpu_check.sh: what a GPU machine must show about fastcifar, in one prepared run that fits its time budget.
#
#   bash bench/gpu_check.sh DATA_DIR OUT_DIR              # on the GPU machine (480 s)
#   bash bench/gpu_check.sh --dry-run DATA_DIR OUT_DIR    # every step at toy sizes on a CPU (tests/test_gpu_check.py)
#
# The check itself is bench/gpu_check.py (standard library only; its docstring lists the steps, their shares of the
# budget and what each writes); this wrapper runs it with $PYTHON (default python3), the interpreter that has torch.
# docs/development.md ("Maintainers: the borrowed GPU check") gives the exact calls a GPU run makes: what to carry,
# the command, the timeout.
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_check.py" "$@"
