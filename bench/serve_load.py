#!/usr/bin/env python3
"""Serving through Triton vs in-process: what `fastcifar serve` costs and what dynamic batching buys.

Starts `fastcifar serve MODEL` on free loopback ports, runs the load test (`fastcifar load-test`), stops the
server, then times the same predictor in this process, one thread, at the request batch and at the batch the server
formed. Prints one table and one JSON object; the ratios are from the same run.

    python bench/serve_load.py                                  # an untrained ResNet-18 (speed only)
    python bench/serve_load.py --model runs/r18 --concurrency 1,8,32 --batch 8 --requests 300

MODEL defaults to an untrained ResNet-18 (CIFAR stem, 32 px): throughput does not depend on the weights. Results:
bench/README.md ("Serving on Triton").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from fastcifar.runtime import cpu_name, cpu_vector_extensions  # noqa: E402 - after the checkout is importable


def untrained_model(folder: Path) -> Path:
    import torch

    from fastcifar.models import create_model, save_model

    torch.manual_seed(0)
    model, spec = create_model("resnet18", "random", "cifar", image_size=32)
    out = folder / "resnet18-untrained"
    save_model(model.eval(), spec, out, metrics={}, extra={"run_name": out.name})
    return out


def start_server(model: Path, extra: list[str]) -> tuple[subprocess.Popen, dict]:
    """`fastcifar serve` on the CPU under the name `bench`, on free loopback ports (triton_server.launch); (process,
    its ready line)."""
    from fastcifar.serve.triton_server import free_ports, launch

    ports = free_ports(3)
    return launch([model, "--device", "cpu", "--name", "bench", "--http-port", ports[0], "--grpc-port", ports[1],
                   "--metrics-port", ports[2], *extra], stderr=subprocess.DEVNULL, cwd=REPO)


def in_process(model: Path, batch: int, requests: int) -> dict:
    """The same predictor, this process, one thread: images/s and p50 latency at `batch`."""
    from fastcifar.serve.predictor import load_predictor

    predictor = load_predictor(model, device="cpu")
    pixels = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    for _ in range(3):
        predictor.logits(pixels)
    times = []
    start = time.perf_counter()
    for _ in range(requests):
        t0 = time.perf_counter()
        predictor.logits(pixels)
        times.append(time.perf_counter() - t0)
    wall = time.perf_counter() - start
    return {"batch": batch, "requests": requests, "images_per_s": round(batch * requests / wall, 1),
            "p50_ms": round(float(np.percentile(np.asarray(times) * 1000, 50)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="[default: an untrained ResNet-18]")
    parser.add_argument("--concurrency", default="1,8,32", help="[default: 1,8,32]")
    parser.add_argument("--batch", type=int, default=8, help="images per request [default: 8]")
    parser.add_argument("--requests", type=int, default=200, help="per level [default: 200]")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per level at most [default: 30]")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON object here")
    args = parser.parse_args()
    load_start = round(os.getloadavg()[0], 2)  # CPU figures mean little without the machine's load

    import torch

    import fastcifar
    from fastcifar.bench.tables import print_load_table
    from fastcifar.bench.load_test import LoadConfig, load_test
    from fastcifar.config import parse_counts
    from fastcifar.runtime import package_version

    concurrency = parse_counts(args.concurrency, "--concurrency", sort=True)  # before anything starts
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or untrained_model(Path(tmp))
        proc, ready = start_server(model, [])
        try:
            result = load_test(LoadConfig(server=ready["urls"]["http"], model="bench", concurrency=concurrency,
                                          batch_sizes=(args.batch,), requests=args.requests,
                                          duration_s=args.duration, metrics_url=ready["urls"]["metrics"]),
                               log=lambda m: print(f"load: {m}", file=sys.stderr))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
        best_server_batch = max(int(round(r["server_mean_batch"] or args.batch)) for r in result["rows"])
        local = [in_process(model, args.batch, args.requests)]
        if best_server_batch != args.batch:
            local.append(in_process(model, best_server_batch, max(20, args.requests * args.batch // best_server_batch)))
    base = local[0]["images_per_s"]
    for row in result["rows"]:
        row["ratio_to_in_process_same_batch"] = round(row["images_per_s"] / base, 2) if base else None
    result.update(in_process=local, model_path=str(args.model or "untrained resnet18 (cifar stem, 32 px)"),
                  versions={"python": platform.python_version(), "torch": torch.__version__,
                            "fastcifar": fastcifar.__version__, "pytriton": package_version("nvidia-pytriton"),
                            "tritonclient": package_version("tritonclient"), "numpy": np.__version__},
                  cpu_count=os.cpu_count(), date=time.strftime("%Y-%m-%d"),
                  machine={"cpu": cpu_name(), "vector": cpu_vector_extensions(), "load_average_start": load_start,
                           "load_average_end": round(os.getloadavg()[0], 2)})
    print_load_table(result)
    for row in local:
        print(f"in-process (this process, one thread) batch {row['batch']}: {row['images_per_s']} img/s, "
              f"p50 {row['p50_ms']} ms")
    for row in result["rows"]:
        print(f"{row['concurrency']} client(s): {row['ratio_to_in_process_same_batch']}x in-process at batch "
              f"{args.batch}")
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
