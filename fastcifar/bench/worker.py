"""One backend's measurements, run in a process of its own: `python -m fastcifar.bench.worker JOB.json`.

Owns the timing method of `fastcifar bench`: per batch size, the first call timed apart, warm-up calls that size the
timed window, then back-to-back calls timed with CUDA events (torch, tensorrt) or the wall clock around a sync
(ONNX Runtime); batch-1 latency end to end. The job file names the model, backend, device, the images (.npy) and
where the logits and the result go. Why a process per backend, and the method in full: bench/README.md,
"Inference backends".
"""

from __future__ import annotations

import math
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np

from fastcifar.errors import FastCifarError
from fastcifar.fileio import write_json


def _wall_timer(step: Callable, iters: int, sync: Callable) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    return time.perf_counter() - start


def _event_timer(step: Callable, iters: int, sync: Callable) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    sync()
    start.record()
    for _ in range(iters):
        step()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000.0


TIMERS: dict[str, Callable[[Callable, int, Callable], float]] = {"wall": _wall_timer, "events": _event_timer}


def calibrated_iters(per_call_s: float, min_time_s: float, min_iters: int, max_iters: int = 100_000) -> int:
    """How many calls fill `min_time_s` at `per_call_s` each, clamped to [min_iters, max_iters]."""
    if per_call_s <= 0:
        return max_iters
    return int(min(max(math.ceil(min_time_s / per_call_s), min_iters), max_iters))


def time_calls(step: Callable, sync: Callable, timer: str, *, warmup_s: float, min_time_s: float,
               min_iters: int) -> dict:
    """First-call time, then warm-up, then the timed loop; returns seconds per call and the counts."""
    start = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - start
    warm, start = 0, time.perf_counter()
    while warm < 1 or time.perf_counter() - start < warmup_s:
        step()
        warm += 1
        if warm % 8 == 0 or time.perf_counter() - start >= warmup_s:
            sync()  # asynchronous backends: the clock only means something after a sync
    sync()
    per_call = (time.perf_counter() - start) / warm
    iters = calibrated_iters(per_call, min_time_s, min_iters)
    elapsed = TIMERS[timer](step, iters, sync)
    return {"seconds_per_call": elapsed / iters, "iters": iters, "first_call_s": first}


def tile_batch(images: np.ndarray, batch: int) -> np.ndarray:
    """`batch` images cycled from `images` (a batch larger than the test set repeats it)."""
    return np.ascontiguousarray(images[np.arange(batch) % len(images)])


def percentile_ms(samples_s: list[float]) -> dict:
    ms = np.asarray(samples_s) * 1000.0
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()),
            "n": int(len(ms))}


def peak_rss_mb() -> float:
    """This process's own peak resident memory.

    Not ru_maxrss on Linux: exec() carries the parent's high-water mark into it, so every worker of a 1 GB
    parent reported exactly the parent's 1,003 MB. VmHWM belongs to the process's current address space.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    scale = 1024.0 if sys.platform != "darwin" else 1024.0 * 1024.0  # KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


class MemoryTracker:
    """Peak host RSS of this process, and peak device memory on CUDA.

    Device: torch's own peak where torch allocates, and the used-memory growth seen by cudaMemGetInfo,
    sampled after every measurement, for runtimes with their own allocators (ONNX Runtime, TensorRT).
    """

    def __init__(self, device_type: str):
        self.cuda = device_type == "cuda"
        self.base_used = self.peak_used = 0
        if self.cuda:
            import torch

            free, total = torch.cuda.mem_get_info()
            self.base_used = total - free
            torch.cuda.reset_peak_memory_stats()

    def sample(self) -> None:
        if self.cuda:
            import torch

            free, total = torch.cuda.mem_get_info()
            self.peak_used = max(self.peak_used, total - free - self.base_used)

    def result(self) -> dict:
        host_mb = peak_rss_mb()
        device_mb = None
        if self.cuda:
            import torch

            self.sample()
            device_mb = max(self.peak_used, torch.cuda.max_memory_reserved()) / 2**20
        return {"peak_host_mb": round(host_mb, 1), "peak_device_mb": None if device_mb is None else round(device_mb, 1)}


def evaluate_logits(predictor, images: np.ndarray, batch: int) -> np.ndarray:
    """Logits for every image, in fixed-size batches (the last one padded) so compiled/engine shapes stay static."""
    out = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        padded = tile_batch(chunk, batch) if len(chunk) < batch else np.ascontiguousarray(chunk)
        out.append(predictor.to_numpy(predictor.run(predictor.to_input(padded)))[:len(chunk)])
    return np.concatenate(out).astype(np.float32)


def measure_batch(predictor, images: np.ndarray, batch: int, job: dict) -> dict:
    """Throughput with the input on the device (and, off the CPU, with the host-to-device copy in the loop)."""
    pixels = tile_batch(images, batch)
    limits = dict(warmup_s=job["warmup_s"], min_time_s=job["min_time_s"], min_iters=job["min_iters"])
    resident = predictor.to_input(pixels)
    device = time_calls(lambda: predictor.run(resident), predictor.synchronize, predictor.timing, **limits)
    result = {"img_s": batch / device["seconds_per_call"], "first_call_s": device["first_call_s"],
              "iters": device["iters"], "img_s_h2d": None}
    if not predictor.device.startswith("cpu"):
        h2d = time_calls(lambda: predictor.run(predictor.to_input(pixels)), predictor.synchronize,
                         predictor.timing, **limits)
        result["img_s_h2d"] = batch / h2d["seconds_per_call"]
    return result


def measure_latency(predictor, images: np.ndarray, job: dict) -> dict:
    one = np.ascontiguousarray(images[:1])
    call = lambda: predictor.to_numpy(predictor.run(predictor.to_input(one)))  # noqa: E731
    for _ in range(3):
        call()
    samples = []
    deadline = time.perf_counter() + job["min_time_s"]
    while len(samples) < job["latency_iters"] or (time.perf_counter() < deadline and len(samples) < 10_000):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return percentile_ms(samples)


def run_job(job: dict) -> dict:
    """Load the predictor, write its logits on all images (if asked), then time it (if asked)."""
    from fastcifar.serve.predictor import load_predictor
    from fastcifar.serve.torch_runner import configure_fp32_reference

    if job["backend"].startswith("torch"):
        configure_fp32_reference()  # the PyTorch rows are the fp32 reference: no TF32 convolutions
    memory = MemoryTracker(job["device_type"])
    started = time.perf_counter()
    predictor = load_predictor(job["artifact"], job["backend"], job["device"], isolated=True,
                               threads=job.get("threads"), precision=job.get("precision"))
    load_s = time.perf_counter() - started
    images = np.load(job["images"])
    started = time.perf_counter()
    if job.get("evaluate", True):  # repeated timing rounds skip it: the logits do not change
        eval_batch = min(job["eval_batch"], getattr(predictor, "batch_limit", None) or job["eval_batch"])
        np.save(job["logits_out"], evaluate_logits(predictor, images, eval_batch))
    eval_s = time.perf_counter() - started
    memory.sample()
    result = {"predictor": predictor.describe(), "load_s": load_s, "eval_s": eval_s, "throughput": {},
              "throughput_h2d": {}, "first_call_s": {}, "latency_ms": None}
    if job["timing"]:
        for batch in job["batch_sizes"]:
            limit = getattr(predictor, "batch_limit", None)
            if limit is not None and batch > limit:
                result.setdefault("notes", []).append(f"batch {batch} skipped: above the engine's max batch {limit}")
                continue
            measured = measure_batch(predictor, images, batch, job)
            memory.sample()
            result["throughput"][str(batch)] = measured["img_s"]
            result["throughput_h2d"][str(batch)] = measured["img_s_h2d"]
            result["first_call_s"][str(batch)] = measured["first_call_s"]
        result["latency_ms"] = measure_latency(predictor, images, job)
    return {**result, **memory.result()}


def main(argv: list[str]) -> int:
    import json

    job = json.loads(Path(argv[0]).read_text())
    try:
        result = run_job(job)
    except FastCifarError as exc:
        result = {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - reported to the parent as this backend's failure, with the trace
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    write_json(job["result_out"], result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
