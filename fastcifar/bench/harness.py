"""`fastcifar bench`: accuracy/parity and speed of every inference backend, and the CI parity gate.

Owns `BenchConfig` and `bench(cfg)`: for each model and backend spec, measure.py's rows (skipped with the reason,
or measured in a worker process and scored against the PyTorch fp32 reference), each emitted and appended to
`cfg.jsonl` the moment it is final (a bench cut short keeps every finished row); `max_accuracy_drop` makes it a
gate (`passed`). docs/inference.md says what a row holds; tables.py writes the reports.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fastcifar.bench import DEFAULT_RESULTS_DIR
from fastcifar.bench.measure import Runner, bench_model, find_reference, machine_info, split_backend
from fastcifar.config import parse_counts
from fastcifar.errors import FastCifarError
from fastcifar.fileio import append_jsonl, make_dir
from fastcifar.serve.artifacts import DEFAULT_CACHE_DIR
from fastcifar.precision import SERVING_PRECISIONS
from fastcifar.serve.predictor import BACKENDS

DEFAULT_BATCH_SIZES = (1, 64, 256, 1024)


@dataclass(frozen=True)
class BenchConfig:
    models: tuple[str, ...]
    backends: tuple[str, ...] = BACKENDS
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    data_dir: str | None = None
    download: bool = False  # a benchmark never fetches data unasked (the CLI's --download turns it on)
    device: str = "auto"
    max_images: int | None = None  # first N test images (None: all)
    reference: str | None = None  # PyTorch fp32 reference model (default: see module docstring)
    max_accuracy_drop: float | None = None  # points (0.1 = a tenth of a percentage point)
    results_dir: str | None = str(DEFAULT_RESULTS_DIR)  # None: write nothing
    name: str | None = None  # results file stem (default: inference-<models>-<device>)
    cache_dir: str = str(DEFAULT_CACHE_DIR)
    warmup_s: float = 0.5
    min_time_s: float = 1.0
    min_iters: int = 3
    latency_iters: int = 100
    threads: int | None = None  # CPU threads per backend (None: each runtime's default, all physical cores)
    precision: str | None = None  # torch backends without their own ':precision' (None: bf16 CUDA, fp32 CPU)
    worker_timeout_s: float = 3600.0
    timing: bool = True  # False: accuracy and parity only
    repeats: int = 1  # timing rounds, round-robin over the backends; the best round counts (see merge_rounds)
    jsonl: str | None = None  # append each row here as one JSON line the moment it is final (None: off)

    def __post_init__(self):
        for spec in self.backends:
            split_backend(spec)  # each one known, with a precision only where one applies
        checks = [
            (len(self.models) > 0, "give at least one MODEL"),
            (len(self.backends) > 0 and len(set(self.backends)) == len(self.backends),
             f"--backends must list distinct backends from {', '.join(BACKENDS)}"),
            (self.precision is None or self.precision in SERVING_PRECISIONS,
             f"unknown --precision '{self.precision}' (choose from {', '.join(SERVING_PRECISIONS)})"),
            (len(self.batch_sizes) > 0 and all(int(b) >= 1 for b in self.batch_sizes),
             f"--batch-sizes must be positive integers, got {self.batch_sizes}"),
            (self.max_images is None or self.max_images >= 1, "--max-images must be >= 1"),
            (self.threads is None or self.threads >= 1, "--threads must be >= 1"),
            (self.repeats >= 1, f"--repeats must be >= 1, got {self.repeats}"),
            (self.max_accuracy_drop is None or self.max_accuracy_drop >= 0, "--max-accuracy-drop must be >= 0"),
            (self.min_iters >= 1 and self.min_time_s >= 0 and self.warmup_s >= 0 and self.latency_iters >= 1,
             "timing options must be positive"),
            (self.name is None or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name) is not None,
             f"--name is a file name stem (letters, digits, '.', '_', '-'; no path), got '{self.name}'"),
        ]
        for ok, message in checks:
            if not ok:
                raise FastCifarError(message)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BenchReport:
    rows: list[dict]
    env: dict
    config: dict
    failures: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {"env": self.env, "config": self.config, "passed": self.passed, "failures": self.failures,
                "results": self.rows}


# ---------------------------------------------------------------------------------------------- pure parts


def gate_failures(rows: list[dict], max_accuracy_drop: float | None) -> list[str]:
    """Why the run fails: every backend that failed to run, and (with a limit) every drop beyond it."""
    failures = [f"{r['model']} / {r.get('label', r['backend'])}: failed ({r['reason']})"
                for r in rows if r["status"] == "failed"]
    if max_accuracy_drop is not None:
        failures += [f"{r['model']} / {r.get('label', r['backend'])}: accuracy {r['accuracy']:.2%} is "
                     f"{r['accuracy_drop']:.2f} "
                     f"points below the PyTorch reference's {r['reference_accuracy']:.2%} "
                     f"(limit {max_accuracy_drop:g})"
                     for r in rows if r["status"] == "ok" and r["accuracy_drop"] is not None
                     and r["accuracy_drop"] > max_accuracy_drop]
        # a gate that compared nothing has not passed: every backend of a model skipped (none installed, no GPU)
        for model in dict.fromkeys(r["model"] for r in rows):
            own = [r for r in rows if r["model"] == model]
            if not any(r["status"] == "ok" for r in own):
                why = "; ".join(f"{r.get('label', r['backend'])}: {r['reason']}" for r in own)
                failures.append(f"{model}: no backend could run it here, so the parity gate checked nothing ({why})")
    return failures


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    return parse_counts(text, "--batch-sizes")


def parse_backends(text: str) -> tuple[str, ...]:
    """`torch,torch:bf16,onnxruntime` -> ('torch', 'torch:bf16', 'onnxruntime'), each checked."""
    names = tuple(part.strip() for part in str(text).split(",") if part.strip())
    if not names:
        raise FastCifarError(f"--backends needs at least one backend (choose from {', '.join(BACKENDS)})")
    for name in names:
        split_backend(name)
    return names


# ---------------------------------------------------------------------------------------------- reference


def _test_images(cfg: BenchConfig) -> tuple[np.ndarray, np.ndarray, str]:
    from fastcifar.data.datasets import model_split
    from fastcifar.rundir import recorded_data_dirs, recorded_meta
    from fastcifar.serve.artifacts import model_class_names, source_run_dir

    # where the runs were trained from: each model's own run (an .onnx's source run when it is here) and --reference
    sources = [s for s in map(source_run_dir, cfg.models) if s] + ([Path(cfg.reference)] if cfg.reference else [])
    recorded = [d for source in sources for d in recorded_data_dirs(source)]
    metas = [m for m in map(recorded_meta, sources) if m]
    names = {n for n in map(model_class_names, cfg.models) if n}
    kinds = {m.get("dataset", "cifar10") for m in metas}
    if len(names) > 1 or len(kinds) > 1:
        raise FastCifarError("the models were trained on different datasets or classes: bench them one dataset at "
                             "a time (the accuracy parity compares every backend on the same test images)")
    test, root = model_split("test", cfg.data_dir, metas[0] if metas else {}, recorded=recorded,
                             download=cfg.download, class_names=next(iter(names), None))
    n = len(test) if cfg.max_images is None else min(cfg.max_images, len(test))
    return test.images[:n], test.labels[:n], str(root)


def bench(cfg: BenchConfig, *, log: Callable[[str], None] = lambda message: None) -> BenchReport:
    """Measure every backend of every model in `cfg`; write the reports unless `cfg.results_dir` is None."""
    from fastcifar.runtime import env_info, resolve_device

    # torch.device() only parses the name: CUDA stays uninitialised here, the child processes use the GPU.
    resolved = resolve_device(cfg.device)
    device, device_type = str(resolved), resolved.type
    for model in cfg.models:  # option mistakes fail before minutes of work
        if not Path(model).expanduser().exists():
            raise FastCifarError(f"model {model} does not exist")
        reference = find_reference(Path(model).expanduser(), cfg.reference)
        if cfg.max_accuracy_drop is not None and reference is None:
            raise FastCifarError(f"--max-accuracy-drop needs a PyTorch reference for {model}: pass --reference "
                                 "RUN_DIR (the run it was exported from)")
    if cfg.jsonl:
        check_jsonl_path(cfg.jsonl)
    images, labels, root = _test_images(cfg)
    if cfg.results_dir:
        make_dir(cfg.results_dir, "--results-dir")
    log(f"{len(images)} test images from {root}, device {device}")
    load_start = _busy_check(device_type, log)
    emit = (lambda row: append_row(cfg.jsonl, row)) if cfg.jsonl else (lambda row: None)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fastcifar-bench-") as tmp:
        runner = Runner(cfg, device_type, device, images, Path(tmp), log, machine_info(device, device_type))
        for model in cfg.models:
            rows += bench_model(model, cfg, runner, labels, emit=emit)
    env = {**env_info(), "data_dir": root, "load_avg_start": load_start, "load_avg_end": os.getloadavg()[0]}
    report = BenchReport(rows=rows, env=env, config=cfg.to_dict(),
                         failures=gate_failures(rows, cfg.max_accuracy_drop))
    if cfg.results_dir:
        from fastcifar.bench.tables import write_reports

        report.files = write_reports(report, Path(cfg.results_dir), cfg.name or default_name(cfg, device_type))
    return report


def check_jsonl_path(path: str | Path) -> Path:
    """Make --jsonl's folder now and refuse a path that cannot be a file, before any work is spent."""
    path = Path(path).expanduser()
    make_dir(path.parent, f"--jsonl {path}: its folder")
    if path.exists() and not path.is_file():
        raise FastCifarError(f"--jsonl {path} is not a file")
    if not os.access(path.parent, os.W_OK):
        raise FastCifarError(f"--jsonl {path} cannot be written: no permission to write in {path.parent}")
    return path


def append_row(path: str | Path, row: dict) -> None:
    """Append one finished row to --jsonl as a JSON line; the file is replaced atomically, so it always holds
    whole lines only, whenever the process is killed."""
    path = Path(path).expanduser()
    try:
        append_jsonl(path, row)
    except OSError as exc:
        raise FastCifarError(f"--jsonl {path} cannot be written: {exc.strerror or exc}") from None


def _busy_check(device_type: str, log: Callable[[str], None]) -> float:
    """The 1-minute load average, with a warning when other work will distort CPU timings."""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if device_type == "cpu" and load > 0.5 * cores:
        policy = os.environ.get("OMP_WAIT_POLICY")
        fix = "" if policy == "PASSIVE" else (
            " - and OpenMP threads spin-wait for busy cores: rerun with OMP_WAIT_POLICY=PASSIVE (measured 1.7-1.8x "
            "faster on a loaded 2-core machine, bench/README.md) or --threads 1")
        log(f"warning: the machine is busy (load {load:.1f} on {cores} cores): CPU figures will be low and noisy{fix}")
    return load


def default_name(cfg: BenchConfig, device_type: str) -> str:
    from fastcifar.models import model_name

    return "inference-" + "+".join(model_name(m) for m in cfg.models)[:80] + f"-{device_type}"
