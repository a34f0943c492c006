"""Predictors: one call for every inference backend - uint8 HWC pixel batches in, probabilities out.

Owns `load_predictor(path, backend=None, device=None)` and the `Predictor` backends:
  torch           the run's model.safetensors in PyTorch eager (fp32: the parity reference)
  torch-compiled  the same behind torch.compile (static shapes: one compile per batch size)
  onnxruntime     an .onnx file on ONNX Runtime: TensorRT EP, CUDA EP, then CPU, as available
  tensorrt        a TensorRT engine on its own runner (fastcifar/trt_runner.py): CUDA tensors in and out
`backend=None` picks from the file type (run dir/.safetensors -> torch, .onnx -> onnxruntime, .engine ->
tensorrt); a run directory given to onnxruntime/tensorrt is exported on the fly into the artifact cache.
Preprocessing (resize to the model's image size, mean/std) always comes from the model's own metadata
(model.json, the ONNX metadata_props or the engine sidecar) and never from the caller.

Every predictor splits work into `to_input` (host pixels -> backend input on its device), `run` (may be
asynchronous; output stays on the device) and `to_numpy`, so `fastcifar bench` can time the device-resident
path and the host-to-device path separately. `load_image` (fastcifar/images.py) is re-exported here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fastcifar.artifacts import BACKEND_ARTIFACT, DEFAULT_BACKEND, DEFAULT_CACHE_DIR, artifact_kind, ensure_artifact
from fastcifar.errors import FastCifarError
from fastcifar.images import find_images, load_image  # noqa: F401 - load_image is part of this module's API

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


# ---------------------------------------------------------------------------------------------- onnxruntime


def ort_providers(device) -> list:
    """Execution providers in preference order for `device`: TensorRT EP, CUDA EP, CPU (what is installed)."""
    import importlib.util

    import onnxruntime as ort

    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    available = set(ort.get_available_providers())
    options = {"device_id": str(device.index or 0)}
    wanted = [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
    # onnxruntime-gpu lists the TensorRT EP even where TensorRT's libraries are absent, and then prints a
    # screen of load errors before falling back: only ask for it when the tensorrt package imports.
    if importlib.util.find_spec("tensorrt") is not None:
        wanted.insert(0, ("TensorrtExecutionProvider", {**options, "trt_engine_cache_enable": "True",
                                                        "trt_engine_cache_path": str(DEFAULT_CACHE_DIR / "ort-trt")}))
    return [p for p in wanted if (p[0] if isinstance(p, tuple) else p) in available]


class OnnxRuntimePredictor(Predictor):
    backend = "onnxruntime"

    def __init__(self, path: Path, device, *, isolated: bool = False):
        import onnxruntime as ort

        from fastcifar.export.onnx import read_onnx_metadata

        super().__init__(spec_from_metadata(read_onnx_metadata(path)), path)
        self.torch_device, self.device = device, str(device)
        options = ort.SessionOptions()
        # ORT's worker threads spin while idle; beside PyTorch in one process that took torch from 2.1k to
        # 0.2k img/s here. Spinning is allowed only when the predictor has its process to itself (bench).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if isolated else "0")
        options.log_severity_level = 3  # errors only: ORT's warnings about graph rewrites are noise to users
        try:
            self.session = ort.InferenceSession(str(path), options, providers=ort_providers(device))
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for corrupt models
            raise FastCifarError(f"ONNX Runtime cannot load {path} ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        self.providers = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.normalized = self.spec.get("input_kind") == "normalized"
        if self.normalized:  # the graph takes float NCHW: preprocess with the same torch code as the reference
            self.input_size = CIFAR_PIXELS
            self._preprocess = _normalizer(self.spec)
        io = {"cuda": _OrtCudaIO, "cpu": _OrtCpuIO}[device.type]
        self.io = io(self.session, self.input_name, self.output_name, device.index or 0)

    def to_input(self, pixels):
        return self.io.to_input(self._preprocess(pixels) if self.normalized else pixels)

    def run(self, inputs):
        return self.io.run(inputs)

    def to_numpy(self, outputs):
        return self.io.to_numpy(outputs)

    def describe(self):
        return {**super().describe(), "providers": self.providers}


def _normalizer(spec: dict) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 NHWC -> float32 NCHW normalised at the model's image size (for `normalized`-input ONNX files)."""
    import torch

    pipeline = make_pixel_pipeline(torch.nn.Identity(), spec["mean"], spec["std"], int(spec["image_size"]))

    def preprocess(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return pipeline(torch.from_numpy(pixels)).contiguous().numpy()

    return preprocess


class _OrtCpuIO:
    """Host arrays in and out: session.run is synchronous."""

    def __init__(self, session, input_name, output_name, device_id):
        self.session, self.input_name, self.output_name = session, input_name, output_name

    def to_input(self, array):
        return array

    def run(self, array):
        return self.session.run([self.output_name], {self.input_name: array})[0]

    def to_numpy(self, output):
        return np.asarray(output)


class _OrtCudaIO:
    """Device-resident OrtValues through IOBinding: no host round trip between to_input, run and the output."""

    def __init__(self, session, input_name, output_name, device_id):
        self.session, self.input_name, self.output_name, self.device_id = session, input_name, output_name, device_id

    def to_input(self, array):
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(array, "cuda", self.device_id)

    def run(self, value):
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, value)
        binding.bind_output(self.output_name, "cuda", self.device_id)
        self.session.run_with_iobinding(binding)  # returns after ORT synchronised its own stream
        return binding.get_outputs()[0]

    def to_numpy(self, value):
        return value.numpy()


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

    return None if importlib.util.find_spec("onnxruntime") else "ONNX Runtime is not installed (pip install onnxruntime-gpu)"


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
    if backend == "tensorrt" and name == "auto":
        name = "cuda"  # an engine runs nowhere else; resolve_device explains a missing GPU
    resolved = resolve_device(name)
    if backend == "tensorrt" and resolved.type != "cuda":
        raise FastCifarError("the tensorrt backend needs a CUDA GPU (use --backend onnxruntime or torch on the CPU)")
    return torch.device(resolved)


def _load_tensorrt(path, device, **_):
    from fastcifar.trt_runner import TensorRTPredictor

    return TensorRTPredictor(path, device)


_FACTORIES: dict[str, Callable[..., Predictor]] = {
    "torch": lambda path, device, **_: TorchPredictor(path, device),
    "torch-compiled": lambda path, device, **_: TorchPredictor(path, device, compile_model=True),
    "onnxruntime": lambda path, device, isolated=False: OnnxRuntimePredictor(path, device, isolated=isolated),
    "tensorrt": _load_tensorrt,
}


def load_predictor(path: Path | str, backend: str | None = None, device=None, *,
                   cache_dir: Path | str = DEFAULT_CACHE_DIR, isolated: bool = False) -> Predictor:
    """A Predictor for `path` (run dir, model.safetensors, .onnx or TensorRT engine) on `backend`.

    backend: torch | torch-compiled | onnxruntime | tensorrt | None (from the file type).
    device: None/'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:N'.
    cache_dir: where on-the-fly ONNX exports / engines of a run directory are kept.
    isolated: the predictor has this process to itself (lets ONNX Runtime spin its threads; bench sets it).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FastCifarError(f"model {path} does not exist")
    backend = backend or DEFAULT_BACKEND[artifact_kind(path)]
    if backend not in _FACTORIES:
        raise FastCifarError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
    resolved = _resolve_device(device, backend)
    artifact = ensure_artifact(path, backend, cache_dir)
    return _FACTORIES[backend](artifact, resolved, isolated=isolated)


# ---------------------------------------------------------------------------------------------- files


def predict_files(predictor: Predictor, paths, *, topk: int = 3, batch_size: int = 64):
    """Top-k predictions for image files and directories. Returns (results, failures).

    results: [{"file": str, "top": [{"label": str, "prob": float}, ...]}] in input order;
    failures: [(file, message)] for paths that were missing or unreadable - the rest are still predicted.
    """
    if topk < 1:
        raise FastCifarError(f"--topk must be >= 1, got {topk}")
    files, failures = find_images(paths)
    loaded: list[tuple[str, np.ndarray]] = []
    for file in files:
        try:
            loaded.append((str(file), load_image(file, predictor.input_size)))
        except FastCifarError as exc:
            failures.append((str(file), str(exc)))
    results = []
    k = min(topk, len(predictor.class_names))
    for start in range(0, len(loaded), batch_size):
        chunk = loaded[start:start + batch_size]
        probs = predictor.predict(np.stack([pixels for _, pixels in chunk]))
        for (name, _), row in zip(chunk, probs):
            order = np.argsort(-row, kind="stable")[:k]
            results.append({"file": name, "top": [{"label": predictor.class_names[i], "prob": float(row[i])}
                                                  for i in order]})
    return results, failures
