"""One model's bench rows: which artifact each backend spec runs (split_backend, find_reference), each job in a fresh
worker process (Runner, run_worker: fastcifar/bench/worker.py times it), the best of several timing rounds, and
parity against the PyTorch fp32 reference as soon as its logits exist (bench_model). harness.bench drives it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from fastcifar.errors import FastCifarError
from fastcifar.export.parity import parity_metrics
from fastcifar.precision import SERVING_PRECISIONS
from fastcifar.rundir import MODEL_FILE
from fastcifar.serve.artifacts import artifact_kind, cannot_run, ensure_artifact, source_run_candidates
from fastcifar.serve.predictor import BACKENDS, TORCH_BACKENDS, backend_unavailable, resolve_precision


def merge_rounds(results: list[dict]) -> dict:
    """One result from several timing rounds of a backend: the best round per figure.

    Why best-of-N: on a shared machine other work only ever slows a round down, so the fastest round is the
    closest to what the backend can do; every round's throughput is kept for inspection.
    """
    first = results[0]
    merged = {**first, "rounds": len(results)}
    for key in ("throughput", "throughput_h2d"):
        batches = first.get(key) or {}
        merged[key] = {b: None if first[key][b] is None else max(r[key][b] for r in results) for b in batches}
    merged["throughput_rounds"] = {b: [r["throughput"][b] for r in results] for b in first.get("throughput") or {}}
    latencies = [r["latency_ms"] for r in results if r.get("latency_ms")]
    merged["latency_ms"] = min(latencies, key=lambda lat: lat["p50"]) if latencies else None
    for key in ("peak_host_mb", "peak_device_mb"):
        values = [r[key] for r in results if r.get(key) is not None]
        merged[key] = max(values) if values else None
    return merged


def split_backend(spec: str) -> tuple[str, str | None]:
    """'torch:bf16' -> ('torch', 'bf16'); 'onnxruntime' -> ('onnxruntime', None). A precision is the torch
    backends' only: an exported file runs at the precision it was exported with."""
    name, _, precision = spec.partition(":")
    if name not in BACKENDS:
        raise FastCifarError(f"unknown backend '{name}' (choose from {', '.join(BACKENDS)}; the torch backends take "
                             f"a precision too, e.g. torch:bf16)")
    if precision and precision not in SERVING_PRECISIONS:
        raise FastCifarError(f"unknown precision in '{spec}' (choose from {', '.join(SERVING_PRECISIONS)})")
    if precision and name not in TORCH_BACKENDS:
        raise FastCifarError(f"'{spec}': only {' and '.join(TORCH_BACKENDS)} take a precision; export a "
                             f"{precision} ONNX file (fastcifar export --precision {precision}) to bench one")
    return name, precision or None


def _declared_source(model: Path) -> Path | None:
    """The run an .onnx file was exported from, if it is on disk here with the very same weights."""
    from fastcifar.export.onnx import read_onnx_metadata, sha256_file

    try:
        meta = read_onnx_metadata(model)
    except FastCifarError:
        return None
    name, sha = meta.get("source_run"), meta.get("source_weights_sha256")
    if not name or not sha:
        return None
    for candidate in source_run_candidates(model, name):
        weights = candidate / MODEL_FILE
        if weights.is_file() and sha256_file(weights) == sha:
            return candidate
    return None


def find_reference(model: Path, explicit: str | None) -> Path | None:
    """The PyTorch fp32 reference for `model`: --reference, the model's own weights, or its declared source run."""
    if explicit:
        ref = Path(explicit).expanduser()
        if not ref.exists() or artifact_kind(ref) != "weights":
            raise FastCifarError(f"--reference must be a run directory or model.safetensors; {ref} is not")
        return ref
    kinds = {"weights": lambda m: m, "onnx": _declared_source, "engine": lambda m: None}
    return kinds[artifact_kind(model)](model)


# ---------------------------------------------------------------------------------------------- running


def _worker_env() -> dict:
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])  # the folder holding fastcifar/ (a checkout or site)
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_worker(job: dict, workdir: Path, timeout_s: float) -> dict:
    """Run one job in a fresh interpreter; its result dict, or {'error': ...} when it failed or died."""
    job_file = workdir / f"{job['id']}.job.json"
    job_file.write_text(json.dumps(job))
    command = [sys.executable, "-m", "fastcifar.bench.worker", str(job_file)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=_worker_env())
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout_s:.0f} s"}
    result_file = Path(job["result_out"])
    if result_file.is_file():
        result = json.loads(result_file.read_text())
    else:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
        result = {"error": f"worker exited with code {proc.returncode}: {tail[0]}"}
    if "error" in result and proc.stderr.strip():
        result["stderr_tail"] = proc.stderr.strip().splitlines()[-15:]  # the trace of an unexpected failure
    return result


class Runner:
    """Runs jobs for one bench invocation: shared images, one scratch directory, numbered jobs."""

    def __init__(self, cfg, device_type: str, device: str, images: np.ndarray, workdir: Path,
                 log: Callable[[str], None], machine: dict | None = None):
        self.cfg, self.device_type, self.device, self.workdir, self.log = cfg, device_type, device, workdir, log
        self.machine = machine if machine is not None else machine_info(device, device_type)
        self.images_path = workdir / "images.npy"
        np.save(self.images_path, images)
        self.count = 0

    def run(self, artifact: Path, backend: str, *, timing: bool, evaluate: bool = True,
            precision: str | None = None) -> tuple[dict, np.ndarray | None]:
        self.count += 1
        job_id = f"{self.count:02d}-{backend}" + (f"-{precision}" if precision else "")
        cfg = self.cfg
        job = {"id": job_id, "artifact": str(Path(artifact).resolve()), "backend": backend, "device": self.device,
               "precision": precision,
               "device_type": self.device_type, "images": str(self.images_path), "eval_batch": max(cfg.batch_sizes),
               "batch_sizes": list(cfg.batch_sizes), "timing": timing, "warmup_s": cfg.warmup_s,
               "min_time_s": cfg.min_time_s, "min_iters": cfg.min_iters, "latency_iters": cfg.latency_iters,
               "threads": cfg.threads, "evaluate": evaluate,
               "logits_out": str(self.workdir / f"{job_id}.logits.npy"),
               "result_out": str(self.workdir / f"{job_id}.result.json")}
        result = run_worker(job, self.workdir, cfg.worker_timeout_s)
        if "error" in result:
            self.log(f"{backend}: failed: {result['error']}")
            for line in result.get("stderr_tail", []):
                self.log(f"  {line}")
        logits = np.load(job["logits_out"]) if evaluate and "error" not in result else None
        return result, logits


def _empty_row(model: str, spec: str, device: str, status: str, reason: str | None = None) -> dict:
    backend, precision = split_backend(spec)
    return {"model": model, "backend": backend, "label": spec, "precision": precision, "status": status,
            "reason": reason, "device": device, "provider": None, "note": None,
            "artifact": None, "accuracy": None, "reference_accuracy": None, "accuracy_drop": None,
            "agreement": None, "max_abs_diff": None, "mean_abs_diff": None, "throughput": {},
            "throughput_h2d": {}, "latency_ms": None, "peak_host_mb": None, "peak_device_mb": None}


def bench_model(model: str, cfg, runner: Runner, labels: np.ndarray,
                emit: Callable[[dict], None] = lambda row: None) -> list[dict]:
    """Rows (one per backend spec) for one model: run every available backend, then score against the reference.

    Each row goes to `emit` as soon as it and every row before it are final (see the module docstring)."""
    path = Path(model).expanduser()
    if not path.exists():
        raise FastCifarError(f"model {path} does not exist")
    reference = find_reference(path, cfg.reference)
    context = {"images": int(len(labels)), "batch_sizes": [int(b) for b in cfg.batch_sizes],
               "machine": runner.machine}
    final: dict[str, dict] = {}  # spec -> finished row
    waiting: dict[str, dict] = {}  # spec -> measured row still waiting for the reference logits
    artifacts: dict[str, Path] = {}
    logits: dict[str, np.ndarray | None] = {}
    emitted = 0

    def flush() -> None:
        nonlocal emitted
        while emitted < len(cfg.backends) and cfg.backends[emitted] in final:
            emit(final[cfg.backends[emitted]])
            emitted += 1

    for spec in cfg.backends:
        prepared = _prepare(model, path, spec, cfg, runner)
        if isinstance(prepared, dict):
            final[spec] = {**prepared, **context}
        else:
            artifacts[spec] = prepared
    flush()
    ref = _ReferenceLogits(path, reference, artifacts, cfg, runner)

    def finish(spec: str, row: dict) -> None:
        if row["status"] == "ok":
            row.update(parity_metrics(logits[spec], labels, ref.logits))
            row["reference"] = str(reference) if reference is not None else None
        final[spec] = {**row, **context}

    def measured(spec: str, results: list[dict], spec_logits: np.ndarray | None) -> None:
        logits[spec] = spec_logits
        waiting[spec] = _measured_row(model, runner.device, artifacts[spec], spec, results)
        finish_waiting()
        flush()

    def finish_waiting() -> None:
        """Finish every waiting row that can be: all of them once the reference logits are known, else the failed
        ones (they have no parity to score)."""
        for name in list(waiting):
            if ref.ready or waiting[name]["status"] != "ok":
                finish(name, waiting.pop(name))

    ref.start()
    _measure(artifacts, cfg, runner, on_first=ref.first_round, on_final=measured)
    ref.settle()  # only when no row could give the logits: the untimed reference job (raises if it fails)
    finish_waiting()
    flush()
    return [final[spec] for spec in cfg.backends]


class _ReferenceLogits:
    """The reference's logits for one model, known as early as possible so rows can be final (and written) early.

    They are a torch row's when that row ran these very weights at fp32 (the first such row that succeeds), else
    those of an untimed PyTorch fp32 job: run before the timing when no such row is planned, or right after the
    planned ones failed."""

    def __init__(self, model: Path, reference: Path | None, artifacts: dict[str, Path], cfg,
                 runner: Runner):
        self.reference, self.runner = reference, runner
        self.logits: np.ndarray | None = None
        self.ready = reference is None
        self.candidates: list[str] = []
        if reference is None:
            runner.log("no PyTorch reference for this model (pass --reference RUN_DIR): agreement not measured")
            return
        from fastcifar.models import resolve_model_files

        same = artifact_kind(model) == "weights" and \
            resolve_model_files(model)[0].resolve() == resolve_model_files(reference)[0].resolve()
        # The reference is PyTorch fp32 eager: a torch row at another precision is measured against it, not used as it.
        if same:
            self.candidates = [spec for spec in artifacts if split_backend(spec)[0] == "torch"
                               and spec_precision(spec, cfg, runner.device_type) == "fp32"]

    def start(self) -> None:
        if not self.ready and not self.candidates:
            self._run_job()

    def first_round(self, spec: str, result: dict, out: np.ndarray | None) -> None:
        """A backend's first round is done: a candidate that ran at fp32 gives the logits; when the last candidate
        failed, the reference job runs now (rounds go in backend order, so the first good candidate wins)."""
        if self.ready or spec not in self.candidates:
            return
        if "error" not in result and result.get("predictor", {}).get("precision", "fp32") == "fp32":
            self.logits, self.ready = out, True
            return
        self.candidates.remove(spec)
        if not self.candidates:
            self._run_job()

    def settle(self) -> None:
        if not self.ready:
            self._run_job()

    def _run_job(self) -> None:
        self.runner.log(f"reference: PyTorch fp32 on {self.reference}")
        result, ref_logits = self.runner.run(self.reference, "torch", timing=False, precision="fp32")
        if "error" in result:
            raise FastCifarError(f"the PyTorch reference {self.reference} failed: {result['error']}")
        self.logits, self.ready = ref_logits, True


def spec_precision(spec: str, cfg, device_type: str) -> str | None:
    """The precision a backend spec runs at: its own (torch:bf16), else --precision, else the device default."""
    name, precision = split_backend(spec)
    return resolve_precision(name, precision or (cfg.precision if name in TORCH_BACKENDS else None), device_type)


def _prepare(model: str, path: Path, spec: str, cfg, runner: Runner) -> Path | dict:
    """The artifact a backend runs (exported/built into the cache when needed), or a skipped/failed row.

    A backend that cannot run here (package missing, no GPU) or cannot run this kind of file (torch and an .onnx) is
    'skipped: why' and never fails the gate (gate_failures fails a gate where no backend ran at all)."""
    name, _ = split_backend(spec)
    reason = cannot_run(path, name) or backend_unavailable(name, runner.device_type)
    if reason:
        runner.log(f"{spec}: skipped: {reason}")
        return _empty_row(model, spec, runner.device, "skipped", reason)
    runner.log(f"{spec}: preparing {path.name}")
    try:
        return ensure_artifact(path, name, cfg.cache_dir)
    except FastCifarError as exc:
        return _empty_row(model, spec, runner.device, "failed", f"export: {exc}")


def _measure(artifacts: dict[str, Path], cfg, runner: Runner,
             on_first: Callable[[str, dict, np.ndarray | None], None] = lambda spec, result, out: None,
             on_final: Callable[[str, list[dict], np.ndarray | None], None] = lambda spec, results, out: None,
             ) -> tuple[dict, dict]:
    """({spec: [result per round]}, {spec: logits}); rounds go round-robin so load hits every backend alike.

    `on_first(spec, result, logits)` follows each backend's first round; `on_final(spec, results, logits)` follows
    its last one (or the round it failed in: a failed backend is not run again)."""
    runs: dict[str, list[dict]] = {}
    logits: dict[str, np.ndarray | None] = {}
    rounds = cfg.repeats if cfg.timing else 1
    for round_index in range(1, rounds + 1):
        for spec, artifact in artifacts.items():
            if round_index > 1 and any("error" in r for r in runs[spec]):
                continue
            runner.log(f"{spec}: measuring {artifact}" + (f" (round {round_index}/{rounds})" if rounds > 1 else ""))
            result, out = runner.run(artifact, split_backend(spec)[0], timing=cfg.timing,
                                     evaluate=round_index == 1,
                                     precision=spec_precision(spec, cfg, runner.device_type))
            runs.setdefault(spec, []).append(result)
            if round_index == 1:
                logits[spec] = out
                on_first(spec, result, out)
            if round_index == rounds or "error" in result:
                on_final(spec, runs[spec], logits[spec])
    return runs, logits


def _measured_row(model: str, device: str, artifact: Path, spec: str, runs: list[dict]) -> dict:
    failed = next((r for r in runs if "error" in r), None)
    return _row_from_result(model, spec, device, artifact, failed or merge_rounds(runs))


def _row_from_result(model: str, spec: str, device: str, artifact: Path, result: dict) -> dict:
    if "error" in result:
        return {**_empty_row(model, spec, device, "failed", result["error"]), "artifact": str(artifact)}
    row = _empty_row(model, spec, device, "ok")
    keys = ("throughput", "throughput_h2d", "first_call_s", "latency_ms", "peak_host_mb", "peak_device_mb",
            "load_s", "eval_s", "notes", "rounds", "throughput_rounds")
    row.update({k: result[k] for k in keys if k in result}, artifact=str(artifact))
    # What really ran: the precision, the device (ONNX Runtime without a CUDA provider runs on the CPU), the note.
    row.update({k: v for k, v in result.get("predictor", {}).items()
                if k in ("providers", "provider", "image_size", "precision", "device", "note")})
    if all(v is None for v in row["throughput_h2d"].values()):
        row["throughput_h2d"] = None  # CPU: the input never leaves host memory
    return row


def machine_info(device: str, device_type: str) -> dict:
    """What each row names as the machine it was measured on: host, CPU, and the GPU when the device is one."""
    import platform

    gpu = None
    if device_type == "cuda":
        # Asked in a short-lived child: CUDA stays uninitialised in this process, the workers own the GPU.
        probe = f"import torch; print(torch.cuda.get_device_name(torch.device({device!r})))"
        try:
            proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                                  env=_worker_env())
            gpu = proc.stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            gpu = None  # the rows then name the device (cuda:N) and host only; the report's env names the GPU
    return {"host": platform.node(), "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "gpu": gpu}
