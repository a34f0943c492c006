"""The load test of a Triton server (`fastcifar load-test URL`): concurrent clients, latency percentiles,
throughput, errors, and the batch sizes Triton's dynamic batcher formed.

Owns one measurement, `load_test(LoadConfig)`: per (concurrency, batch) level, client threads that connect first,
then send seeded random images back to back from one clock until `requests` or `duration_s` runs out; the server's
mean batch comes from Triton's Prometheus counters. Loopback servers only. What each column means: docs/serving.md,
"The load test".
"""

from __future__ import annotations

import platform
import re
import threading
import time
import urllib.request
from dataclasses import dataclass

import numpy as np

from fastcifar.errors import FastCifarError
from fastcifar.serve.triton_client import ServerURL, TritonPredictor, parse_server_url
from fastcifar.serve.triton_server import DEFAULT_PORTS

DEFAULT_CONCURRENCY = (1, 8, 32)
DEFAULT_BATCH = 8  # images per request: a client sending a few images at a time, what dynamic batching is for
DEFAULT_REQUESTS = 200  # per level
DEFAULT_DURATION_S = 20.0  # per level, the bound whatever --requests says


@dataclass
class LoadConfig:
    server: str
    model: str | None = None
    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY
    batch_sizes: tuple[int, ...] = (DEFAULT_BATCH,)
    requests: int = DEFAULT_REQUESTS
    duration_s: float = DEFAULT_DURATION_S
    metrics_url: str | None = None
    seed: int = 0


def default_metrics_url(url: ServerURL) -> str | None:
    """Triton's metrics endpoint when the server uses Triton's default ports (HTTP 8000 / gRPC 8001 -> 8002); None
    otherwise (another port could be another server's: --metrics-url says where)."""
    if url.port != DEFAULT_PORTS[url.protocol]:
        return None
    return f"http://{url.host}:{DEFAULT_PORTS['metrics']}/metrics"


def read_counters(metrics_url: str, model: str) -> dict | None:
    """{"images": nv_inference_count, "executions": nv_inference_exec_count} summed over the model's versions;
    None when the metrics endpoint does not answer. (Metrics, not Triton's statistics API: that one needs PyTriton's
    access token.)"""
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            text = response.read().decode("utf-8", "replace")
    except OSError:
        return None
    out = {"images": 0.0, "executions": 0.0}
    pattern = re.compile(r'^(nv_inference_count|nv_inference_exec_count)\{([^}]*)\}\s+([0-9.eE+-]+)$')
    for line in text.splitlines():
        m = pattern.match(line.strip())
        if m and re.search(r'model="' + re.escape(model) + '"', m.group(2)):
            out["images" if m.group(1) == "nv_inference_count" else "executions"] += float(m.group(3))
    return out


def _client_loop(predictor_args: tuple, pixels: np.ndarray, clock: dict, barrier: threading.Barrier, budget: list,
                 lock: threading.Lock, latencies: list, errors: list) -> None:
    """One client: connect, wait until every client has connected (connections are not timed), then send
    requests until the shared budget or the deadline is spent. Every failure counts as an error."""
    client = None
    try:
        client = TritonPredictor(*predictor_args)
    except Exception as exc:  # noqa: BLE001 - a client that cannot connect is an error of this level
        with lock:
            errors.append(str(exc))
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    if client is None:
        return
    try:
        while time.perf_counter() < clock["deadline"]:
            with lock:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
            start = time.perf_counter()
            try:
                client.run(pixels)
            except Exception as exc:  # noqa: BLE001 - refused, reset, timed out: all errors, none lost
                with lock:
                    errors.append(str(exc))
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
    finally:
        client.close()


def run_level(url: str, model: str, concurrency: int, batch: int, requests: int, duration_s: float,
              metrics_url: str | None, seed: int, size: int = 32) -> dict:
    """One level: `concurrency` clients sending `batch` seeded random images per request (module docstring)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    budget = [requests]
    before = read_counters(metrics_url, model) if metrics_url else None
    clock = {"start": 0.0, "deadline": 0.0}

    def start_clock():  # runs once, when the last client has connected: the timed part starts together
        clock["start"] = time.perf_counter()
        clock["deadline"] = clock["start"] + duration_s

    barrier = threading.Barrier(concurrency, action=start_clock, timeout=120)
    threads = [threading.Thread(target=_client_loop, args=((url, model), pixels, clock, barrier, budget, lock,
                                                           latencies, errors), daemon=True)
               for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration_s + 180)  # connecting + a request in flight at the deadline (tritonclient's timeout)
    wall = time.perf_counter() - clock["start"] if clock["start"] else 0.0
    after = read_counters(metrics_url, model) if metrics_url else None
    lat_ms = np.asarray(latencies) * 1000.0
    mean_batch = None
    if before is not None and after is not None and after["executions"] > before["executions"]:
        mean_batch = (after["images"] - before["images"]) / (after["executions"] - before["executions"])
    return {"concurrency": concurrency, "batch": batch, "requests": len(latencies) + len(errors),
            "ok": len(latencies), "errors": len(errors), "error_example": errors[0] if errors else None,
            "wall_s": round(wall, 3), "images_per_s": round(len(latencies) * batch / wall, 1) if wall else None,
            "p50_ms": _pct(lat_ms, 50), "p95_ms": _pct(lat_ms, 95), "p99_ms": _pct(lat_ms, 99),
            "server_mean_batch": round(mean_batch, 2) if mean_batch is not None else None}


def _pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if len(values) else None


def load_test(cfg: LoadConfig, log=lambda message: None) -> dict:
    """Every (concurrency, batch) level in turn; one dict with the rows and what they were measured on."""
    url = parse_server_url(cfg.server)
    if not url.is_loopback():
        raise FastCifarError(f"{cfg.server}: the load test only runs against a server on this machine "
                             "(localhost / 127.0.0.1), so it cannot overload a shared one by mistake")
    if cfg.requests < 1 or cfg.duration_s <= 0:
        raise FastCifarError("--requests must be >= 1 and --duration > 0")
    probe = TritonPredictor(str(url), cfg.model)
    model, max_batch, size = probe.name, probe.max_batch, probe.input_size
    describe = probe.describe()
    probe.close()
    too_big = [b for b in cfg.batch_sizes if b > max_batch]
    if too_big:
        raise FastCifarError(f"request batch {too_big[0]} is above the model's max_batch_size {max_batch}: the "
                             "server would refuse every request (lower --batch-sizes)")
    metrics_url = cfg.metrics_url or default_metrics_url(url)
    if metrics_url is None:
        log("the server is not on Triton's default port, so its metrics port is unknown: give --metrics-url "
            "(fastcifar serve prints it) to report the batches it formed")
    elif read_counters(metrics_url, model) is None:
        log(f"no Triton metrics at {metrics_url} (--metrics-url): the server's batch sizes are not reported")
        metrics_url = None
    rows = []
    for batch in cfg.batch_sizes:
        for concurrency in cfg.concurrency:
            log(f"{concurrency} client(s) x {batch}-image requests: up to {cfg.requests} requests or "
                f"{cfg.duration_s:g} s")
            rows.append(run_level(str(url), model, concurrency, batch, cfg.requests, cfg.duration_s, metrics_url,
                                  cfg.seed, size))
    import fastcifar

    return {"server": str(url), "model": model, "precision": describe.get("precision"), "max_batch": max_batch,
            "requests_per_level": cfg.requests, "duration_s_per_level": cfg.duration_s, "rows": rows,
            "machine": {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
                        "python": platform.python_version()},
            "fastcifar": fastcifar.__version__, "metrics_url": metrics_url}
