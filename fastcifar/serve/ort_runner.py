"""The ONNX Runtime backend: `OnnxRuntimePredictor` and the execution-provider choice.

Owns how an exported .onnx file is run: providers in preference order (TensorRT EP, CUDA EP, CPU - only
those installed and usable), session options (no thread spinning beside other work), and the I/O path:
host arrays on the CPU, device-resident OrtValues through IOBinding on CUDA (no host round trip between
`to_input`, `run` and the output). Preprocessing comes from the file's fastcifar metadata: `raw` graphs take
the uint8 pixels themselves, `normalized` ones get the same torch preprocessing as the PyTorch reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from fastcifar.errors import FastCifarError
from fastcifar.preprocess import NATIVE_SIZE, spec_from_metadata
from fastcifar.serve.artifacts import DEFAULT_CACHE_DIR
from fastcifar.serve.base import Predictor
from fastcifar.serve.torch_runner import make_pixel_pipeline


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

    def __init__(self, path: Path, device, *, isolated: bool = False, threads: int | None = None):
        import onnxruntime as ort

        from fastcifar.export.onnx import read_onnx_metadata

        super().__init__(spec_from_metadata(read_onnx_metadata(path)), path)
        self.torch_device, self.device = device, str(device)
        options = ort.SessionOptions()
        # ORT's worker threads spin while idle; beside PyTorch in one process that took torch from 2.1k to
        # 0.2k img/s here. Spinning is allowed only when the predictor has its process to itself (bench).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if isolated else "0")
        if threads:
            options.intra_op_num_threads = threads
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
            self.input_size = NATIVE_SIZE
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
