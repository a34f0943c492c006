"""`compare --ray` against one run after another on this machine: the same grid three ways, and Ray's own costs.

1. Ray's fixed costs, in this process: starting a local Ray on 127.0.0.1, an empty task's round trip (median of 50
   after a warm-up), and the first task of a fresh worker that imports torch and fastcifar's training.
2. `fastcifar compare` on one grid (smoke preset, first --train-limit real images, --epochs, 2 seeds x 2 fractions =
   8 runs, no robustness evaluation; the pretrained arm starts from random weights where torchvision's ImageNet
   weights are not cached, which takes the same time), each way in a fresh process: sequential (torch's threads:
   every core), on Ray with --cpus-per-run = every core (one run at a time: Ray's overhead alone) and with
   --cpus-per-run 1 (one run per core at once). Wall time of each and its ratio to the sequential one, and each
   way's largest per-run test-accuracy difference from the sequential records (0 where the threads per run match).

    python bench/ray_overhead.py --data-dir "$FASTCIFAR_DATA" [--train-limit 2000] [--epochs 1]

Writes bench/results/ray_overhead.json and prints a table with the machine. Results: bench/README.md, "compare on
Ray". Ray's files go to a temporary directory that is removed; nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def fixed_costs(cores: int) -> dict:
    import ray

    start = time.perf_counter()
    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=cores, log_to_driver=False,
             configure_logging=False)
    started = time.perf_counter() - start

    @ray.remote(num_cpus=1)
    def empty():
        return None

    @ray.remote(num_cpus=1)
    def imports():
        t = time.perf_counter()
        import torch  # noqa: F401

        import fastcifar.train.loop  # noqa: F401
        return time.perf_counter() - t

    ray.get(empty.remote())  # a worker exists
    trips = []
    for _ in range(50):
        t = time.perf_counter()
        ray.get(empty.remote())
        trips.append(time.perf_counter() - t)
    t = time.perf_counter()
    import_s = ray.get(imports.remote())
    first_task = time.perf_counter() - t
    ray.shutdown()
    return {"start_s": round(started, 2), "empty_task_ms_median": round(1000 * statistics.median(trips), 2),
            "first_training_task_s": round(first_task, 2), "of_which_imports_s": round(import_s, 2)}


def run_compare(args, out: Path, extra: list[str], env: dict) -> dict:
    cmd = [sys.executable, "-m", "fastcifar", "compare", "--data-dir", args.data_dir, "--no-download", "--device",
           "cpu", "--preset", "smoke", "--train-limit", str(args.train_limit), "--epochs", str(args.epochs),
           "--seeds", "2", "--fractions", "0.5,1.0", "--robustness-severities", "none", "--if-no-weights", "stand-in",
           "--out", str(out), *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    runs = json.loads((out / "results.json").read_text())["runs"]
    return {"wall_s": round(wall, 1), "train_seconds_sum": round(sum(r["train_seconds"] for r in runs), 1),
            "test_acc": {r["name"]: r["test_acc"] for r in runs}}


def agreement(rows: dict, base: str) -> None:
    """Each way's largest test-accuracy difference from `base` over the runs both have (0 where the threads per run
    match), and the runs only one of them has (an lr selection that chose differently names other final runs)."""
    ref = rows[base]["test_acc"]
    for row in rows.values():
        common = sorted(set(row["test_acc"]) & set(ref))
        row["max_abs_test_acc_diff"] = round(max(abs(row["test_acc"][n] - ref[n]) for n in common), 4)
        row["runs_not_in_" + base] = sorted(set(row["test_acc"]) - set(ref))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="CIFAR-10 [default: $FASTCIFAR_DATA, else ~/.cache/fastcifar]")
    ap.add_argument("--train-limit", type=int, default=2000, help="training pool of the grid [2000]")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per run [1]")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ray_overhead.json")
    args = ap.parse_args(argv)
    if args.data_dir is None:
        from fastcifar.data.cifar import default_data_dir

        args.data_dir = str(default_data_dir())
    cores = os.cpu_count() or 1
    temp = Path(tempfile.mkdtemp(prefix="fcray", dir="/tmp"))  # short: Ray's socket paths must fit 107 characters
    try:
        (temp / "token").write_text(secrets.token_hex(32))
        from fastcifar.study.ray_runs import isolated_env

        env = {**os.environ, **isolated_env(temp)}
        os.environ.update(isolated_env(temp))  # before ray is imported: it reads them then
        import ray
        import torch

        from fastcifar.runtime import cpu_name

        costs = fixed_costs(cores)
        print(f"Ray's fixed costs: {costs}", flush=True)
        ways = {"sequential": [], f"ray --cpus-per-run {cores}": ["--ray", "--cpus-per-run", str(cores)],
                "ray --cpus-per-run 1": ["--ray", "--cpus-per-run", "1"]}
        rows = {}
        for name, extra in ways.items():
            rows[name] = run_compare(args, temp / name.replace(" ", "_"), extra, env)
            print(f"{name}: {rows[name]['wall_s']} s", flush=True)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    agreement(rows, "sequential")
    base = rows["sequential"]["wall_s"]
    for row in rows.values():
        row["vs_sequential"] = round(row["wall_s"] / base, 2)
    record = {"question": "compare --ray vs one run after another", "date": time.strftime("%Y-%m-%d"),
              "machine": {"cpu": cpu_name(), "cores": cores}, "torch": torch.__version__, "ray": ray.__version__,
              "python": platform.python_version(),
              "grid": {"preset": "smoke", "train_limit": args.train_limit, "epochs": args.epochs, "seeds": 2,
                       "fractions": [0.5, 1.0], "runs": 8, "robustness": None},
              "ray_fixed_costs": costs, "ways": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"\n{record['machine']['cpu']}, {cores} cores; torch {torch.__version__}, Ray {ray.__version__}; smoke grid "
          f"of 8 runs on {args.train_limit} images, {args.epochs} epoch(s)")
    print("| way | wall s | vs sequential | final runs' training s (sum) | max test-acc diff |\n"
          "|---|---:|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['wall_s']} | {row['vs_sequential']:.2f} | {row['train_seconds_sum']} | "
              f"{row['max_abs_test_acc_diff']} |" + (f" other runs: {row['runs_not_in_sequential']}"
                                                      if row["runs_not_in_sequential"] else ""))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
