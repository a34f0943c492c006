"""How long does `make test` take, in one process and on pytest-xdist workers?

Runs the test suite once per `--workers` setting, back to back on the same code, and reports the wall time, the CPU
time of pytest and its children, the test counts and the slowest modules. Workers 0 is pytest in one process; N > 0
is what the Makefile runs (`-n N --dist loadfile --no-loadscope-reorder`).

    python bench/suite_time.py --workers 0,2 --json bench/results/suite_time.json

Takes as long as the suite, once per setting; run it on an otherwise idle machine. Results: bench/README.md ("Test
suite time").
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
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def pytest_command(workers: int, junit: Path, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    if workers > 0:
        cmd += ["-n", str(workers), "--dist", "loadfile", "--no-loadscope-reorder"]
    return cmd + extra


def suite_env() -> dict:
    """The environment `make test` gives pytest: OMP_WAIT_POLICY=PASSIVE unless set (the Makefile's export)."""
    return {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def junit_counts(path: Path) -> tuple[dict, dict[str, float]]:
    """({passed, failed, skipped}, {module: summed seconds}) from pytest's JUnit XML."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    modules: dict[str, float] = defaultdict(float)
    for case in ET.parse(path).getroot().iter("testcase"):
        modules[case.get("classname", "?").rsplit(".", 1)[-1]] += float(case.get("time") or 0)
        if case.find("skipped") is not None:
            counts["skipped"] += 1
        elif case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
        else:
            counts["passed"] += 1
    return counts, dict(modules)


def run_suite(workers: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = pytest_command(workers, junit, extra)
        print(f"== workers {workers}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=suite_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if not junit.is_file():
            raise SystemExit(f"pytest wrote no JUnit XML (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
        counts, modules = junit_counts(junit)
    print(proc.stdout.strip().splitlines()[-1], file=sys.stderr)
    slowest = dict(sorted(modules.items(), key=lambda kv: -kv[1])[:8])
    return {"workers": workers, "exit": proc.returncode, "wall_s": round(wall, 1),
            "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
            **counts, "slowest_modules_s": {k: round(v, 1) for k, v in slowest.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="0,2",
                        help="comma-separated worker counts; 0 = one process (default: 0,2)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments, after --")
    args = parser.parse_args(argv)
    try:
        settings = [int(w) for w in args.workers.split(",")]
    except ValueError:
        parser.error(f"--workers takes comma-separated integers, not {args.workers!r}")
    if any(w < 0 for w in settings):
        parser.error("--workers must be >= 0")

    import pytest
    import torch

    from fastcifar.runtime import package_version

    rows = [run_suite(w, args.pytest_args) for w in settings]
    record = {"host": platform.node(), "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "python": platform.python_version(), "torch": torch.__version__, "pytest": pytest.__version__,
              "pytest_xdist": package_version("pytest-xdist"),
              "omp_wait_policy": suite_env()["OMP_WAIT_POLICY"], "rows": rows}
    print(f"machine: {record['host']}, {record['cores']} cores ({record['cpu']}); python {record['python']}, "
          f"torch {record['torch']}, pytest {record['pytest']}, pytest-xdist {record['pytest_xdist']}, "
          f"OMP_WAIT_POLICY={record['omp_wait_policy']}")
    base = rows[0]["wall_s"]
    print("| workers | wall s | speed-up vs the first row | CPU s (user+sys) | passed | failed | skipped | exit |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['workers']} | {r['wall_s']:.0f} | {base / r['wall_s']:.2f}x | {r['cpu_s']:.0f} | {r['passed']} | "
              f"{r['failed']} | {r['skipped']} | {r['exit']} |")
    for r in rows:
        print(f"slowest modules, workers {r['workers']}: " +
              ", ".join(f"{k} {v:.0f} s" for k, v in r["slowest_modules_s"].items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, args.json)
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
