"""Predictors: one call for every inference backend - uint8 HWC pixel batches in, probabilities out.

Owns `load_predictor(path, backend=None, device=None)`, the entry point scripts call, which backends can run here
(`backend_unavailable`) and `predict_files`. The backends live in torch_runner.py (`torch`, `torch-compiled`),
ort_runner.py (`onnxruntime`) and trt_runner.py (`tensorrt`); `backend=None` picks from the file type, and
preprocessing always comes from the model's own metadata (docs/inference.md, "Naming a model"). `Predictor`
(base.py) and `load_image` (data/images.py) are re-exported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from fastcifar.errors import FastCifarError
from fastcifar.precision import SERVING_PRECISIONS, default_precision
from fastcifar.serve.artifacts import (BACKEND_ARTIFACT, DEFAULT_BACKEND, DEFAULT_CACHE_DIR, artifact_kind,
                                       ensure_artifact)
from fastcifar.serve.base import Predictor  # noqa: F401 - part of this module's API
from fastcifar.data.images import find_images, load_image  # noqa: F401 - load_image is part of this module's API

BACKENDS = tuple(BACKEND_ARTIFACT)


# ---------------------------------------------------------------------------------------------- availability


def _compiler_missing(device_type: str) -> str | None:
    import importlib.util
    import shutil

    if device_type == "cuda":
        return None if importlib.util.find_spec("triton") else "torch.compile on CUDA needs triton (pip install triton)"
    if any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++")):
        return None
    return "torch.compile on the CPU needs a C++ compiler (apt-get install g++)"


def _onnxruntime_missing(device_type: str) -> str | None:
    from fastcifar.extras import onnxruntime_missing

    return onnxruntime_missing()


def _tensorrt_missing(device_type: str) -> str | None:
    if device_type != "cuda":
        return "TensorRT runs on a CUDA GPU; this benchmark runs on the CPU"
    try:
        from fastcifar.export.tensorrt import require_tensorrt

        require_tensorrt()
    except FastCifarError as exc:
        return str(exc)
    return None


_AVAILABILITY: dict[str, Callable[[str], str | None]] = {
    "torch": lambda device_type: None,
    "torch-compiled": _compiler_missing,
    "onnxruntime": _onnxruntime_missing,
    "tensorrt": _tensorrt_missing,
}


def backend_unavailable(backend: str, device_type: str) -> str | None:
    """None when `backend` can run on `device_type` ('cpu'/'cuda') here, else why not (one line)."""
    if backend not in _AVAILABILITY:
        raise FastCifarError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
    return _AVAILABILITY[backend](device_type)


# ---------------------------------------------------------------------------------------------- loading


def _resolve_device(device, backend: str):
    import torch

    from fastcifar.runtime import resolve_device

    name = "auto" if device is None else str(device)
    if backend == "tensorrt":  # an engine runs nowhere else
        if name == "cpu" or not torch.cuda.is_available():
            raise FastCifarError("the tensorrt backend needs a CUDA GPU, and there is none here (use --backend "
                                 "onnxruntime or torch on the CPU)")
        name = "cuda" if name == "auto" else name
    return resolve_device(name)


def _load_torch(path, device, *, compile_model=False, threads=None, precision="fp32", **_):
    from fastcifar.serve.torch_runner import TorchPredictor

    if threads:
        import torch

        torch.set_num_threads(threads)  # process-wide: torch has no per-model thread pool
    return TorchPredictor(path, device, compile_model=compile_model, precision=precision)


def _load_onnxruntime(path, device, *, isolated=False, threads=None, **_):
    from fastcifar.serve.ort_runner import OnnxRuntimePredictor

    return OnnxRuntimePredictor(path, device, isolated=isolated, threads=threads)


def _load_tensorrt(path, device, **_):
    from fastcifar.serve.trt_runner import TensorRTPredictor

    return TensorRTPredictor(path, device)


_FACTORIES: dict[str, Callable[..., Predictor]] = {
    "torch": _load_torch,
    "torch-compiled": lambda path, device, **options: _load_torch(path, device, compile_model=True, **options),
    "onnxruntime": _load_onnxruntime,
    "tensorrt": _load_tensorrt,
}
TORCH_BACKENDS = ("torch", "torch-compiled")  # the backends --precision applies to


def resolve_precision(backend: str, precision: str | None, device_type: str) -> str | None:
    """The precision a PyTorch backend runs at (None for exported files, which carry their own)."""
    if precision is not None and precision not in SERVING_PRECISIONS:
        raise FastCifarError(f"unknown precision '{precision}' (choose from {', '.join(SERVING_PRECISIONS)})")
    if backend not in TORCH_BACKENDS:
        if precision is not None:
            raise FastCifarError(f"--precision applies to the torch backends; the {backend} backend runs the "
                                 f"precision its file was exported with (fastcifar export --precision {precision})")
        return None
    return precision or default_precision(device_type)


def load_predictor(path: Path | str, backend: str | None = None, device=None, *,
                   cache_dir: Path | str = DEFAULT_CACHE_DIR, isolated: bool = False,
                   threads: int | None = None, precision: str | None = None) -> Predictor:
    """A Predictor for `path` (run dir, model.safetensors, .onnx or TensorRT engine) on `backend`.

    backend: torch | torch-compiled | onnxruntime | tensorrt | None (from the file type).
    device: None/'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:N'.
    cache_dir: where on-the-fly ONNX exports / engines of a run directory are kept.
    isolated: the predictor has this process to itself (lets ONNX Runtime spin its threads; bench sets it).
    threads: CPU threads (torch: process-wide set_num_threads; ONNX Runtime: its intra-op pool); None: the
    runtime's default (one per physical core).
    precision: fp32 | bf16 | fp16 for the torch backends (None: bf16 on CUDA, fp32 on the CPU); an exported
    file runs at its own precision (`predictor.precision` says which).
    A backend that cannot run here (package missing, no GPU) is refused with one message before any work.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FastCifarError(f"model {path} does not exist")
    backend = backend or DEFAULT_BACKEND[artifact_kind(path)]
    if backend not in _FACTORIES:
        raise FastCifarError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
    resolved = _resolve_device(device, backend)
    reason = backend_unavailable(backend, resolved.type)
    if reason:
        raise FastCifarError(f"the {backend} backend cannot run here: {reason}")
    precision = resolve_precision(backend, precision, resolved.type)
    artifact = ensure_artifact(path, backend, cache_dir)
    return _FACTORIES[backend](artifact, resolved, isolated=isolated, threads=threads, precision=precision)


# ---------------------------------------------------------------------------------------------- files


def predict_files(predictor: Predictor, paths, *, topk: int = 3, batch_size: int = 64):
    """Top-k predictions for image files and directories. Returns (results, failures).

    results: [{"file": str, "top": [{"label": str, "prob": float}, ...]}] in input order;
    failures: [(file, message)] for paths that were missing or unreadable - the rest are still predicted.
    """
    if topk < 1:
        raise FastCifarError(f"--topk must be >= 1, got {topk}")
    if topk > len(predictor.class_names):
        raise FastCifarError(f"--topk {topk} is more than the model's {len(predictor.class_names)} classes")
    files, failures = find_images(paths)
    results = []
    for start in range(0, len(files), batch_size):  # decode one batch at a time: any folder size fits in memory
        chunk = []
        for file in files[start:start + batch_size]:
            try:
                chunk.append((str(file), load_image(file, predictor.input_size)))
            except FastCifarError as exc:
                failures.append((str(file), str(exc)))
        if not chunk:
            continue
        probs = predictor.predict(np.stack([pixels for _, pixels in chunk]))
        for (name, _), row in zip(chunk, probs):
            order = np.argsort(-row, kind="stable")[:topk]
            results.append({"file": name, "top": [{"label": predictor.class_names[i], "prob": float(row[i])}
                                                  for i in order]})
    return results, failures
