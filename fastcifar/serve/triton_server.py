"""`fastcifar serve MODEL`: any fastcifar predictor behind a real NVIDIA Triton Inference Server, through PyTriton.

Owns the server's life: the checks before anything starts (the `serve` extra, the model name, free ports), the
model's Triton contract (the exported repository's, export/triton.py), a warm-up batch before Triton reports the
model ready, the wait, and the stop (SIGINT/SIGTERM: drain, stop `tritonserver`, remove what a hard stop left).
Entry points: `serve_model`, and `launch` (a server as a child process, for scripts and tests). The contract, the
pitfalls handled here and what has not run yet: docs/serving.md.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fastcifar.errors import FastCifarError
from fastcifar.extras import install_command
from fastcifar.models import model_name

INPUT_NAME, OUTPUT_NAME = "pixels", "logits"  # export/triton.py's raw graphs name them the same
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}  # Triton's own defaults
DEFAULT_HOST = "127.0.0.1"
# The largest batch Triton forms or accepts: the torch predictor's own chunk (base.Predictor.max_batch), so one
# server batch is one forward pass.
DEFAULT_MAX_BATCH = 256
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")  # Triton's (and PyTriton's) model names
SERVE_EXTRA = install_command("serve")
# The metadata keys a served model's config carries (the exported repository's keys, export/triton.py).
META_KEYS = ("class_names", "mean", "std", "image_size", "input_size", "arch", "stem", "init", "precision")
# A served model's server calls itself "fastcifar:<model name>" (GET /v2 answers without PyTriton's token).
SERVER_ID_PREFIX = "fastcifar:"
DRAIN_S = 0.5  # after refusing new requests, before Triton is stopped: a batch in flight finishes (~60 ms on a CPU)


@dataclass
class ServeConfig:
    model: str
    backend: str | None = None
    device: str | None = None
    precision: str | None = None
    name: str | None = None
    host: str = DEFAULT_HOST
    http_port: int = DEFAULT_PORTS["http"]
    grpc_port: int = DEFAULT_PORTS["grpc"]
    metrics_port: int = DEFAULT_PORTS["metrics"]
    max_batch: int = DEFAULT_MAX_BATCH
    queue_delay_us: int | None = None  # None: export/triton.MAX_QUEUE_DELAY_US, the exported repository's
    cache_dir: str | None = None


@dataclass
class ServerInfo:
    """What a started server answers on (printed as the ready line, JSON with --json)."""

    name: str
    host: str
    ports: dict
    backend: str
    precision: str
    device: str
    max_batch: int
    queue_delay_us: int
    class_names: list = field(default_factory=list)
    pid: int = 0

    def urls(self) -> dict:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return {"http": f"http://{host}:{self.ports['http']}", "grpc": f"grpc://{host}:{self.ports['grpc']}",
                "metrics": f"http://{host}:{self.ports['metrics']}/metrics"}

    def to_dict(self) -> dict:
        return {"event": "ready", "model": self.name, "urls": self.urls(), "backend": self.backend,
                "precision": self.precision, "device": self.device, "max_batch": self.max_batch,
                "queue_delay_us": self.queue_delay_us, "class_names": self.class_names, "pid": self.pid}


# ---------------------------------------------------------------------------------------------- checks


def require_pytriton():
    """The PyTriton modules, or one message naming the extra."""
    try:
        from pytriton.decorators import batch
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig
    except ImportError as exc:
        raise FastCifarError(f"fastcifar serve needs PyTriton ({exc.name or exc} is not installed): {SERVE_EXTRA} "
                             "(Linux x86_64 with glibc 2.35 or newer)") from None
    return batch, DynamicBatcher, ModelConfig, Tensor, Triton, TritonConfig


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise FastCifarError(f"--name '{name}' is not a Triton model name: use letters, digits, '.', '_' and '-'")
    return name


def check_ports(host: str, ports: dict) -> None:
    """One message for a port that is taken or given twice, before the model is loaded."""
    seen = {}
    for kind, port in ports.items():
        if not 1 <= int(port) <= 65535:
            raise FastCifarError(f"--{kind}-port {port} is not a port (1-65535)")
        if port in seen:
            raise FastCifarError(f"--{seen[port]}-port and --{kind}-port are both {port}: each endpoint needs its "
                                 "own port")
        seen[port] = kind
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As servers bind: a port whose last connections wait in TIME_WAIT (a server stopped a minute ago) is
            # free; one that something listens on is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, int(port)))
            except OSError as exc:
                why = "is in use" if exc.errno in (98, 48) else f"cannot be bound ({exc.strerror or exc})"
                raise FastCifarError(f"port {port} on {host} {why}: choose another with --{kind}-port") from None


def library_path(current: str | None) -> str | None:
    """LD_LIBRARY_PATH with this interpreter's own libpython directory first, so PyTriton's Python-backend stub
    loads the library that matches this interpreter's standard library (a pyenv Python otherwise got Debian's
    libpython3.11 and the model failed to load: docs/serving.md, "Handled inside")."""
    libdir = sysconfig.get_config_var("LIBDIR")
    library = sysconfig.get_config_var("LDLIBRARY")
    if not libdir or not library or not (Path(libdir) / library).exists():
        return current
    parts = [p for p in (current or "").split(":") if p and p != libdir]
    return ":".join([libdir, *parts])


def model_parameters(predictor) -> dict:
    """The config's `parameters`: fastcifar metadata under the exported repository's keys, and what serves it."""
    from fastcifar.export.triton import metadata_parameters

    spec = predictor.spec
    meta = {key: spec[key] for key in META_KEYS if spec.get(key) is not None}
    meta.update(class_names=list(predictor.class_names), input_size=predictor.input_size,
                image_size=predictor.image_size, precision=predictor.precision, input_kind="raw",
                served_by="fastcifar serve", backend=predictor.backend, device=str(predictor.device))
    if spec.get("source_weights_sha256"):
        meta["source_weights_sha256"] = spec["source_weights_sha256"]
    return metadata_parameters(meta)


def make_infer(predictor, stopping: threading.Event | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """pixels (N, S, S, 3) uint8 -> logits (N, classes) float32; a batch the predictor refuses raises PyTriton's
    bad-parameter error, which Triton returns to that request alone. Once `stopping` is set every request is refused
    at once, so what is in flight drains before Triton stops (stopped mid-batch under load, it crashed)."""
    from pytriton.exceptions import PyTritonBadParameterError

    def infer(pixels: np.ndarray) -> np.ndarray:
        if stopping is not None and stopping.is_set():
            raise PyTritonBadParameterError("the server is stopping")
        try:
            return predictor.logits(pixels)
        except FastCifarError as exc:
            raise PyTritonBadParameterError(str(exc)) from None

    return infer


# ---------------------------------------------------------------------------------------------- serving


def serve_model(cfg: ServeConfig, *, on_ready: Callable[[ServerInfo], None] | None = None,
                log: Callable[[str], None] = lambda message: None, stop_event: threading.Event | None = None,
                install_signal_handlers: bool = True) -> ServerInfo:
    """Load the model, start Triton, block until SIGINT/SIGTERM (or `stop_event`), stop everything. Returns the
    ServerInfo it served with."""
    from fastcifar.export.triton import MAX_QUEUE_DELAY_US
    from fastcifar.serve.artifacts import DEFAULT_CACHE_DIR
    from fastcifar.serve.predictor import load_predictor

    batch, DynamicBatcher, ModelConfig, Tensor, Triton, TritonConfig = require_pytriton()
    name = check_name(cfg.name or model_name(cfg.model))
    if cfg.max_batch < 1:
        raise FastCifarError(f"--max-batch must be >= 1, got {cfg.max_batch}")
    delay = MAX_QUEUE_DELAY_US if cfg.queue_delay_us is None else int(cfg.queue_delay_us)
    if delay < 0:
        raise FastCifarError(f"--queue-delay-us must be >= 0, got {delay}")
    ports = {"http": cfg.http_port, "grpc": cfg.grpc_port, "metrics": cfg.metrics_port}
    check_ports(cfg.host, ports)

    stop = stop_event or threading.Event()
    # Loading and warm-up (an engine build, a compile) run with the usual Ctrl-C: nothing is started yet.
    log(f"loading {cfg.model}")
    predictor = load_predictor(cfg.model, cfg.backend, cfg.device, precision=cfg.precision,
                               cache_dir=cfg.cache_dir or DEFAULT_CACHE_DIR)
    size = predictor.input_size
    started = time.perf_counter()
    for n in sorted({1, min(cfg.max_batch, predictor.max_batch)}):  # compiles, allocates, tunes: before ready
        predictor.logits(np.zeros((n, size, size, 3), np.uint8))
    log(f"warmed up {predictor.backend} {predictor.precision} on {predictor.device} in "
        f"{time.perf_counter() - started:.1f} s")
    previous = {}
    if install_signal_handlers:  # from here SIGINT and SIGTERM stop Triton and its child cleanly
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        info = ServerInfo(name=name, host=cfg.host, ports=ports, backend=predictor.backend,
                          precision=predictor.precision, device=str(predictor.device), max_batch=cfg.max_batch,
                          queue_delay_us=delay, class_names=list(predictor.class_names), pid=os.getpid())
        _run(info, predictor, stop, on_ready, log, batch, DynamicBatcher, ModelConfig, Tensor, Triton, TritonConfig)
        return info
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run(info, predictor, stop, on_ready, log, batch, DynamicBatcher, ModelConfig, Tensor, Triton,
         TritonConfig) -> None:
    from fastcifar.serve.leftovers import Leftovers

    stopping = threading.Event()
    infer = make_infer(predictor, stopping)

    @batch
    def infer_batch(**inputs):
        return {OUTPUT_NAME: infer(inputs[INPUT_NAME])}

    size = predictor.input_size
    # tritonserver's log goes to a file, not to our stdout (PyTriton prints it there otherwise, which would break
    # --json); its tail is in the message when the server fails.
    log_dir = Path(tempfile.mkdtemp(prefix="fastcifar-triton-"))
    log_file = log_dir / "tritonserver.log"
    saved = os.environ.get("LD_LIBRARY_PATH")
    triton = None
    leftovers = Leftovers()
    try:
        # The server's id is what its unguarded metadata endpoint (GET /v2) names: fastcifar's client reads the
        # model's name there, since PyTriton guards the repository index with a token.
        config = TritonConfig(id=f"{SERVER_ID_PREFIX}{info.name}", http_address=info.host,
                              http_port=info.ports["http"], grpc_address=info.host, grpc_port=info.ports["grpc"],
                              metrics_address=info.host, metrics_port=info.ports["metrics"], log_verbose=0,
                              log_file=log_file, exit_timeout_secs=5, allow_gpu_metrics=_has_gpu())
        triton = Triton(config=config)
        preferred = [b for b in (8, 32, 64, 128, 256) if b <= info.max_batch]  # what the batcher aims for
        triton.bind(model_name=info.name, infer_func=infer_batch,
                    inputs=[Tensor(name=INPUT_NAME, dtype=np.uint8, shape=(size, size, 3))],
                    outputs=[Tensor(name=OUTPUT_NAME, dtype=np.float32, shape=(len(predictor.class_names),))],
                    config=ModelConfig(max_batch_size=info.max_batch,
                                       batcher=DynamicBatcher(max_queue_delay_microseconds=info.queue_delay_us,
                                                              preferred_batch_size=preferred or None)),
                    strict=True)
        _add_parameters(triton, info.name, model_parameters(predictor))
        log(f"starting Triton on {info.host} (HTTP {info.ports['http']}, gRPC {info.ports['grpc']}, metrics "
            f"{info.ports['metrics']})")
        os.environ["LD_LIBRARY_PATH"] = library_path(saved) or ""  # tritonserver and its stub inherit it
        try:
            triton.run()
        finally:
            if saved is None:
                os.environ.pop("LD_LIBRARY_PATH", None)
            else:
                os.environ["LD_LIBRARY_PATH"] = saved
        leftovers.started()
        if on_ready:
            on_ready(info)
        while not stop.wait(0.5):
            leftovers.watch()
            if not triton.is_alive():
                raise FastCifarError("the Triton server stopped unexpectedly; its log:\n" + _log_tail(log_file))
    except KeyboardInterrupt:
        pass
    except FastCifarError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyTriton's start-up errors: one message with Triton's own log
        raise FastCifarError(f"Triton did not start ({type(exc).__name__}: {exc}); its log:\n"
                             + _log_tail(log_file)) from None
    finally:
        if triton is not None:
            log("stopping Triton")
            # Requests cut off by the stop make PyTriton warn once per shared-memory block ("Failed to release
            # block ..."): hundreds of lines under load that say nothing the cleanup below does not handle.
            logging.getLogger("pytriton").setLevel(logging.ERROR)
            stopping.set()  # refuse new work, let in-flight batches finish
            time.sleep(DRAIN_S)
            leftovers.watch()
            triton.stop()
            for line in leftovers.cleanup():  # what a hard stop left: processes, segments, folders
                log(f"cleaned up after Triton: {line}")
        shutil.rmtree(log_dir, ignore_errors=True)


def _add_parameters(triton, name: str, parameters: dict) -> None:
    """Put the fastcifar metadata into the model config PyTriton generates. PyTriton has no public field for a
    config's `parameters`; its generated config keeps them in `backend_parameters` (PyTriton 0.7), read before the
    model is loaded."""
    try:
        model = next(m for m in triton._model_manager.models if m.model_name == name)
        model._get_triton_model_config().backend_parameters.update(parameters)
    except (AttributeError, StopIteration) as exc:  # another PyTriton: serve without the metadata, and say so
        print(f"warning: this PyTriton's model config could not carry the class names ({exc}); clients get "
              "indices", file=sys.stderr)


def _has_gpu() -> bool:
    """GPU metrics only where there is a GPU: without one, tritonserver prints "Failed to initialize NVML" on
    stdout, where PyTriton passes it on (and it would break --json)."""
    import torch

    return torch.cuda.is_available()


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def free_ports(n: int, host: str = DEFAULT_HOST) -> list[int]:
    """`n` distinct ports free on `host` right now (held together while the kernel picks them, so none repeats): for
    `launch`'s callers, which pass them as --http-port / --grpc-port / --metrics-port."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def launch(args: list[str], *, timeout_s: float = 300.0, env: dict | None = None, stderr=subprocess.PIPE,
           cwd=None) -> tuple[subprocess.Popen, dict]:
    """`fastcifar serve ARGS --json` as a child process in its own process group, for scripts and tests: (process,
    its ready line as a dict) once the model is ready. Stop it with SIGTERM to the process. One that is not ready
    within `timeout_s` (or exits first) is killed with its children, and FastCifarError says so, with the end of
    its stderr when that is piped."""
    import queue

    proc = subprocess.Popen([sys.executable, "-m", "fastcifar", "serve", *map(str, args), "--json"],
                            stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=cwd,
                            start_new_session=True)
    lines: queue.Queue = queue.Queue()
    # A reader thread: readline() alone would block past the deadline while the server prints nothing.
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] and None, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line.startswith("{"):
            return proc, json.loads(line)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # with its tritonserver child
    proc.wait(30)
    tail = proc.stderr.read()[-3000:] if proc.stderr else ""
    raise FastCifarError(f"fastcifar serve was not ready within {timeout_s:.0f} s (exit {proc.returncode}): {tail}")


def ready_line(info: ServerInfo, as_json: bool) -> str:
    if as_json:
        return json.dumps(info.to_dict())
    urls = info.urls()
    classes = ", ".join(info.class_names[:10]) + (" ..." if len(info.class_names) > 10 else "")
    return (f"serving {info.name} ({info.backend} {info.precision} on {info.device}; max batch {info.max_batch}, "
            f"queue delay {info.queue_delay_us} us; classes: {classes})\n"
            f"  HTTP    {urls['http']}\n  gRPC    {urls['grpc']}\n  metrics {urls['metrics']}\n"
            f"  try:    fastcifar predict --server {urls['http']} --name {info.name} IMAGE...\n"
            f"Ctrl-C or SIGTERM (kill {info.pid}) stops the server.")
