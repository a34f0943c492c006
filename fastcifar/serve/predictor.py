"""Predictors: one call for every inference backend - uint8 HWC pixel batches in, probabilities out.

Owns `load_predictor(path, backend=None, device=None)` and the `Predictor` backends:
  torch           the run's model.safetensors in PyTorch eager (fp32: the parity reference)
  torch-compiled  the same behind torch.compile (static shapes: one compile per batch size)
  onnxruntime     an .onnx file on ONNX Runtime: TensorRT EP, CUDA EP, then CPU (fastcifar/serve/ort_runner.py)
  tensorrt        a TensorRT engine on its own runner (fastcifar/serve/trt_runner.py): CUDA tensors in and out
`backend=None` picks from the file type (run dir/.safetensors -> torch, .onnx -> onnxruntime, .engine ->
tensorrt); a run directory given to onnxruntime/tensorrt is exported on the fly into the artifact cache.
Preprocessing (resize to the model's image size, mean/std) always comes from the model's own metadata
(model.json, the ONNX metadata_props or the engine sidecar) and never from the caller.

Every predictor splits work into `to_input` (host pixels -> backend input on its device), `run` (may be
asynchronous; output stays on the device) and `to_numpy`, so `fastcifar bench` can time the device-resident
path and the host-to-device path separately. `load_image` (fastcifar/serve/images.py) is re-exported here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fastcifar.serve.artifacts import BACKEND_ARTIFACT, DEFAULT_BACKEND, DEFAULT_CACHE_DIR, artifact_kind, ensure_artifact
from fastcifar.errors import FastCifarError
from fastcifar.serve.images import find_images, load_image  # noqa: F401 - load_image is part of this module's API

BACKENDS = tuple(BACKEND_ARTIFACT)
CIFAR_PIXELS = 32  # every fastcifar model takes CIFAR-resolution pixels; larger image sizes resize inside


class Predictor:
    """uint8 (N, input_size, input_size, 3) RGB in; float32 logits / probabilities (N, num_classes) out."""

    backend: str = ""
    device: str = "cpu"
    timing: str = "wall"  # how bench times `run`: "events" (CUDA events on torch's stream) or "wall"
    max_batch: int = 256  # larger inputs are split: bounded memory whatever the caller passes

    def __init__(self, spec: dict, artifact: Path):
        self.spec = spec
        self.artifact = Path(artifact)
        self.class_names: tuple[str, ...] = tuple(spec["class_names"])
        self.input_size: int = int(spec.get("input_size") or CIFAR_PIXELS)
        self.image_size: int = int(spec.get("image_size") or self.input_size)

    # -- backend hooks
    def to_input(self, pixels: np.ndarray) -> Any:
        raise NotImplementedError

    def run(self, inputs: Any) -> Any:
        raise NotImplementedError

    def to_numpy(self, outputs: Any) -> np.ndarray:
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the CPU and for synchronous runtimes)."""

    # -- public
    def check_pixels(self, pixels) -> np.ndarray:
        pixels = np.asarray(pixels)
        want = (self.input_size, self.input_size, 3)
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != want:
            hint = " (one image? add a batch axis: pixels[None])" if pixels.shape == want else ""
            raise FastCifarError(f"{self.backend} predictor takes uint8 pixels of shape (N, {want[0]}, {want[1]}, 3); "
                                 f"got {pixels.dtype} {pixels.shape}{hint}")
        return np.ascontiguousarray(pixels)

    def logits(self, pixels) -> np.ndarray:
        pixels = self.check_pixels(pixels)
        if len(pixels) == 0:
            return np.zeros((0, len(self.class_names)), np.float32)
        chunks = [self.to_numpy(self.run(self.to_input(pixels[i:i + self.max_batch])))
                  for i in range(0, len(pixels), self.max_batch)]
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def predict(self, pixels) -> np.ndarray:
        return softmax(self.logits(pixels))

    def describe(self) -> dict:
        return {"backend": self.backend, "device": self.device, "artifact": str(self.artifact),
                "input_size": self.input_size, "image_size": self.image_size}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)  # shift: exp never overflows
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- torch


def make_pixel_pipeline(model, mean, std, image_size: int):
    """nn.Module: uint8 NHWC pixels -> logits, with the training loader's exact preprocessing.

    Same arithmetic as data/tensor_loader.py (one addcmul normalise at 32 px, then bilinear resize without
    antialias when the model runs larger), so the reference sees what the model saw in training.
    """
    import torch
    import torch.nn.functional as F

    class PixelPipeline(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, 3, 1, 1)
            shift = torch.tensor([-m / s for m, s in zip(mean, std)]).view(1, 3, 1, 1)
            self.register_buffer("scale", scale.permute(0, 2, 3, 1).contiguous(), persistent=False)
            self.register_buffer("shift", shift.permute(0, 2, 3, 1).contiguous(), persistent=False)

        def forward(self, pixels):
            # NHWC permuted to NCHW is channels_last memory: no copy before the first conv.
            x = torch.addcmul(self.shift, pixels.float(), self.scale).permute(0, 3, 1, 2)
            if x.shape[-1] != image_size or x.shape[-2] != image_size:
                x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                                  antialias=False)
            return self.model(x.contiguous(memory_format=torch.channels_last))

    return PixelPipeline().eval()


class TorchPredictor(Predictor):
    backend = "torch"

    def __init__(self, path: Path, device, *, compile_model: bool = False):
        import torch

        from fastcifar.models import load_model

        self.torch_device = device
        self.device = str(device)
        model, spec, meta = load_model(path, device=device)
        super().__init__({**meta, **spec.to_dict(), "input_size": CIFAR_PIXELS}, path)
        model = model.to(memory_format=torch.channels_last)  # measured faster for convs on H100 and CPU here
        self.pipeline = make_pixel_pipeline(model, spec.mean, spec.std, spec.image_size).to(device)
        if compile_model:
            self.backend = "torch-compiled"
            # Static shapes: each batch size compiles once; bench keeps those compiles out of its timing.
            self.pipeline = torch.compile(self.pipeline, dynamic=False)
        self.timing = "events" if device.type == "cuda" else "wall"

    def to_input(self, pixels):
        import torch

        return torch.from_numpy(pixels).to(self.torch_device, non_blocking=False)

    def run(self, inputs):
        import torch

        with torch.inference_mode():
            return self.pipeline(inputs)

    def to_numpy(self, outputs):
        return outputs.float().cpu().numpy()

    def synchronize(self):
        import torch

        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)


def configure_fp32_reference() -> None:
    """Make fp32 mean fp32 on CUDA: cuDNN convolutions default to TF32 (10-bit mantissa) on Ampere+."""
    import torch

    if hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision"):
        # torch >= 2.9: the new API only - mixing it with allow_tf32 makes torch raise when either is read.
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


# ---------------------------------------------------------------------------------------------- metadata

_META_LISTS = ("class_names", "mean", "std")
_META_INTS = ("image_size", "input_size", "num_classes")


def spec_from_metadata(meta: dict) -> dict:
    """Normalise exported metadata (ONNX metadata_props or an engine sidecar) to model.json-style keys.

    Accepts keys with or without the `fastcifar.` prefix and values either decoded or JSON-encoded strings.
    """
    spec = {}
    for key, value in meta.items():
        name = key[len("fastcifar."):] if key.startswith("fastcifar.") else key
        if isinstance(value, str) and (name in _META_LISTS or name in _META_INTS):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        spec[name] = value
    missing = [k for k in ("class_names", "mean", "std") if not spec.get(k)]
    if missing:
        raise FastCifarError(f"the model's metadata lacks {', '.join(missing)}: was it exported by fastcifar "
                             "(`fastcifar export`)? Preprocessing is never guessed")
    spec.setdefault("input_kind", "raw")
    return spec


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
    import importlib.util

    if importlib.util.find_spec("onnxruntime"):
        return None
    return "ONNX Runtime is not installed (pip install onnxruntime-gpu)"


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


def _load_torch(path, device, *, compile_model=False, threads=None, **_):
    if threads:
        import torch

        torch.set_num_threads(threads)  # process-wide: torch has no per-model thread pool
    return TorchPredictor(path, device, compile_model=compile_model)


def _load_onnxruntime(path, device, *, isolated=False, threads=None):
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


def load_predictor(path: Path | str, backend: str | None = None, device=None, *,
                   cache_dir: Path | str = DEFAULT_CACHE_DIR, isolated: bool = False,
                   threads: int | None = None) -> Predictor:
    """A Predictor for `path` (run dir, model.safetensors, .onnx or TensorRT engine) on `backend`.

    backend: torch | torch-compiled | onnxruntime | tensorrt | None (from the file type).
    device: None/'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:N'.
    cache_dir: where on-the-fly ONNX exports / engines of a run directory are kept.
    isolated: the predictor has this process to itself (lets ONNX Runtime spin its threads; bench sets it).
    threads: CPU threads (torch: process-wide set_num_threads; ONNX Runtime: its intra-op pool); None: the
    runtime's default (one per physical core).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FastCifarError(f"model {path} does not exist")
    backend = backend or DEFAULT_BACKEND[artifact_kind(path)]
    if backend not in _FACTORIES:
        raise FastCifarError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
    resolved = _resolve_device(device, backend)
    artifact = ensure_artifact(path, backend, cache_dir)
    return _FACTORIES[backend](artifact, resolved, isolated=isolated, threads=threads)


# ---------------------------------------------------------------------------------------------- files


def predict_files(predictor: Predictor, paths, *, topk: int = 3, batch_size: int = 64):
    """Top-k predictions for image files and directories. Returns (results, failures).

    results: [{"file": str, "top": [{"label": str, "prob": float}, ...]}] in input order;
    failures: [(file, message)] for paths that were missing or unreadable - the rest are still predicted.
    """
    if topk < 1:
        raise FastCifarError(f"--topk must be >= 1, got {topk}")
    files, failures = find_images(paths)
    results = []
    k = min(topk, len(predictor.class_names))
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
            order = np.argsort(-row, kind="stable")[:k]
            results.append({"file": name, "top": [{"label": predictor.class_names[i], "prob": float(row[i])}
                                                  for i in order]})
    return results, failures
