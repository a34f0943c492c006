#!/usr/bin/env python3
"""What `fastcifar evaluate` costs: wall time and peak memory of the calibration + corruption evaluation.

Runs `fastcifar evaluate MODEL --json` in a child process once per severity set (by default all nine corruptions
at severities 1-5, then 1,3,5) and records its wall time, its peak RSS (the child's ru_maxrss) and the accuracies it
reported, with the machine, versions and load average. Without MODEL it trains a 1-epoch `smoke` run on 2,000
images first (the cost does not depend on the weights).

    python bench/evaluate_cost.py --data-dir "$FASTCIFAR_DATA" --json bench/results/evaluate_cost-cpu.json

Results: bench/README.md ("Evaluation cost").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from fastcifar.data.cifar import default_data_dir  # noqa: E402 - after the checkout is importable
from fastcifar.runtime import cpu_name, cpu_vector_extensions  # noqa: E402

FASTCIFAR = [sys.executable, "-m", "fastcifar"]


def timed(argv: list[str]) -> tuple[float, float, dict]:
    """(wall seconds, peak RSS GB of this child, its --json output)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    # ru_maxrss of RUSAGE_CHILDREN is the largest child so far (KiB on Linux): each run is larger than the trainer
    peak = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 2**20
    return wall, peak, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", type=Path, default=None, help="[default: train a smoke run first]")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(), help="[default: $FASTCIFAR_DATA]")
    parser.add_argument("--severity-sets", default="1-5;1,3,5", help="';'-separated [default: 1-5;1,3,5]")
    parser.add_argument("--device", default="cpu", help="[default: cpu]")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON object here")
    args = parser.parse_args()

    import torch

    with tempfile.TemporaryDirectory(prefix="evaluate-cost-") as tmp:
        model = args.model
        if model is None:
            model = Path(tmp) / "run"
            subprocess.run([*FASTCIFAR, "train", "--data-dir", str(args.data_dir), "--preset", "smoke", "--epochs",
                            "1", "--train-limit", "2000", "--device", args.device, "--out", str(model)],
                           check=True, capture_output=True)
        rows = []
        for severities in args.severity_sets.split(";"):
            load = os.getloadavg()[0]
            wall, peak, out = timed([*FASTCIFAR, "evaluate", str(model), "--data-dir", str(args.data_dir),
                                     "--device", args.device, "--severities", severities, "--json"])
            rows.append({"severities": severities, "wall_s": round(wall, 1), "peak_rss_gb": round(peak, 2),
                         "test_images": out["n_test"], "corruptions": len(out["corruptions"]),
                         "clean_accuracy": out["clean"]["accuracy"], "load_avg_start": round(load, 2),
                         "load_avg_end": round(os.getloadavg()[0], 2)})
            print(json.dumps(rows[-1]), flush=True)
    result = {"question": "wall time and peak memory of fastcifar evaluate", "date": time.strftime("%Y-%m-%d"),
              "command": sys.argv, "device": args.device,
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                          "vector": cpu_vector_extensions()},
              "versions": {"python": platform.python_version(), "torch": torch.__version__},
              "rows": rows}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
