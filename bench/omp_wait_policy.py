"""OpenMP's wait policy and torch's thread count on a shared CPU: which default should fastcifar's verbs run with?

Measures, idle and with `--load` busy-looping processes beside it, ResNet-18 training images/s (batch 128) and
batch-1 forward latency for OMP_WAIT_POLICY unset vs PASSIVE vs GOMP_SPINCOUNT=10000, torch threads = cores vs 1;
each cell in a fresh process (the policy is read when torch loads OpenMP), rounds alternating, median counts.

    python bench/omp_wait_policy.py --rounds 3 --out bench/results/omp_wait_policy.json

Results: bench/README.md ("CPU threads: OpenMP's wait policy").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

WORKER = r"""
import json, sys, time
import torch, torchvision
threads = int(sys.argv[1])
if threads:
    torch.set_num_threads(threads)
torch.manual_seed(0)
model = torchvision.models.resnet18(num_classes=10)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
def step():
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
for _ in range(2):
    step()
t0 = time.perf_counter(); n = 0
while n < 6 or time.perf_counter() - t0 < 3.0:
    step(); n += 1
train = n * 128 / (time.perf_counter() - t0)
model.eval(); one = torch.randn(1, 3, 32, 32); times = []
with torch.inference_mode():
    for _ in range(5):
        model(one)
    t_end = time.perf_counter() + 2.0
    while len(times) < 20 or time.perf_counter() < t_end:
        t = time.perf_counter(); model(one); times.append(time.perf_counter() - t)
times.sort()
print(json.dumps({"train_img_s": train, "infer_ms": 1000 * times[len(times) // 2],
                  "threads": torch.get_num_threads()}))
"""


# The settings compared: the OpenMP runtime's default, PASSIVE (threads sleep at once), and a short spin before
# sleeping (libgomp's GOMP_SPINCOUNT: ~10k iterations is tens of microseconds instead of the default 300k).
POLICIES = {"unset": {}, "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}, "spin-10k": {"GOMP_SPINCOUNT": "10000"}}


def run_cell(policy: str, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(POLICIES[policy])
    out = subprocess.run([sys.executable, "-c", WORKER, str(threads)], env=env, capture_output=True, text=True,
                         timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def start_load(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds per cell [3]")
    ap.add_argument("--load", type=int, default=1, help="busy-looping processes for the loaded runs [1]")
    ap.add_argument("--out", type=Path, default=None, help="JSON path [bench/results/omp_wait_policy.json]")
    args = ap.parse_args(argv)
    cores = os.cpu_count() or 1
    variants = [(p, t) for t in (0, 1) for p in POLICIES]  # threads 0 = torch's default (cores)
    results = []
    for machine in ("idle", "loaded"):
        load = start_load(args.load) if machine == "loaded" else []
        try:
            time.sleep(1.0 if load else 0)
            cells = {v: [] for v in variants}
            for r in range(args.rounds):
                for v in variants:
                    cells[v].append(run_cell(*v))
                    print(f"{machine} round {r + 1} {v[0]} threads={v[1] or cores}: "
                          f"{cells[v][-1]}", file=sys.stderr, flush=True)
        finally:
            for p in load:
                p.kill()
                p.wait()
        for (policy, threads), runs in cells.items():
            results.append({"machine": machine, "policy": policy, "env": POLICIES[policy], "threads": threads or cores,
                            "train_img_s": statistics.median(r["train_img_s"] for r in runs),
                            "infer_ms": statistics.median(r["infer_ms"] for r in runs),
                            "rounds": runs})
    import torch

    record = {"host": platform.node(), "cpu": platform.processor() or platform.machine(), "cores": cores,
              "torch": torch.__version__, "load_processes": args.load, "results": results}
    print(f"# OMP wait policy: {cores} cores, torch {torch.__version__}, ResNet-18 imagenet stem 32 px fp32, "
          f"train batch 128, infer batch 1, median of {args.rounds} rounds, loaded = {args.load} busy process(es)")
    print("| machine | OpenMP waiting | threads | train img/s | infer ms (batch 1) |")
    print("|---|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['machine']} | {r['policy']} | {r['threads']} | {r['train_img_s']:,.0f} | {r['infer_ms']:.2f} |")
    out = args.out or Path(__file__).parent / "results" / "omp_wait_policy.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
