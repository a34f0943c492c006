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
from fastcifar.extras import install_command, require_onnxruntime
from fastcifar.preprocess import NATIVE_SIZE, spec_from_metadata
from fastcifar.serve.artifacts import DEFAULT_CACHE_DIR
from fastcifar.serve.base import Predictor
from fastcifar.serve.torch_runner import make_pixel_pipeline


def _installed_ort_packages() -> set[str]:
    """Which ONNX Runtime distributions pip installed (`onnxruntime`, `onnxruntime-gpu`, ...)."""
    from importlib import metadata

    names = {"onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino"}
    found = set()
    for name in names:
        try:
            metadata.version(name)
            found.add(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def no_cuda_provider_note(packages: set[str]) -> str:
    """Why ONNX Runtime has no CUDA provider on a CUDA machine, and the fix (one line)."""
    if {"onnxruntime", "onnxruntime-gpu"} <= packages:
        why = ("`onnxruntime` and `onnxruntime-gpu` are both installed and the CPU package shadows the GPU one; "
               f"fix: pip uninstall -y onnxruntime onnxruntime-gpu && {install_command('gpu')}")
    elif "onnxruntime-gpu" in packages:
        why = ("`onnxruntime-gpu` is installed but its CUDA provider is not usable (CUDA/cuDNN libraries it was "
               "built for are missing); fix: install the CUDA and cuDNN versions its release notes name")
    else:
        why = ("only the CPU package `onnxruntime` (the cpu extra) is installed; fix: pip uninstall -y onnxruntime "
               f"&& {install_command('gpu')}")
    return f"ran on ONNX Runtime's CPU provider: no CUDAExecutionProvider here ({why})"


def ort_tensorrt_major(capi_dir: Path | None = None) -> int | None:
    """The TensorRT major version this onnxruntime's TensorRT provider library links (libnvinfer.so.N), if any.

    Why: onnxruntime-gpu 1.31 links libnvinfer.so.10; with TensorRT 11 installed its TensorRT provider cannot
    load, and onnxruntime then prints an "EP Error ... Falling back" banner and retries without our options."""
    import re

    if capi_dir is None:
        import importlib.util

        spec = importlib.util.find_spec("onnxruntime")
        if spec is None or not spec.submodule_search_locations:
            return None
        capi_dir = Path(list(spec.submodule_search_locations)[0]) / "capi"
    library = Path(capi_dir) / "libonnxruntime_providers_tensorrt.so"
    if not library.is_file():
        return None
    found = re.search(rb"libnvinfer\.so\.(\d+)", library.read_bytes())
    return int(found.group(1)) if found else None


def _tensorrt_ep_block(installed_version: str | None, built_major: int | None) -> str | None:
    """Why onnxruntime's TensorRT provider must not be asked for here (None: it may be)."""
    from fastcifar.export.tensorrt import trt_major

    if installed_version is None:
        return "TensorRT is not installed"
    if built_major is None:
        return "this onnxruntime has no TensorRT provider library"
    if trt_major(installed_version) != built_major:
        return (f"this onnxruntime was built against TensorRT {built_major} and TensorRT {installed_version} is "
                "installed (fastcifar's own tensorrt backend runs that version)")
    return None


def ort_providers(device, available=None, tensorrt_version: str | None | bool = False,
                  packages: set[str] | None = None, built_major: int | None | bool = False
                  ) -> tuple[list, str | None]:
    """(execution providers in preference order for `device`, a note when they are not what a GPU should get).

    TensorRT EP, CUDA EP, CPU - only those installed and usable. On a CUDA machine whose ONNX Runtime has no CUDA
    provider (a CPU-only `onnxruntime` next to or instead of `onnxruntime-gpu`, a common state), the CPU
    provider runs and the note says so with the fix, instead of failing the run. The TensorRT provider is asked
    for only when the installed TensorRT's major version is the one onnxruntime was built against. `available`,
    `tensorrt_version`, `packages` and `built_major` default (False) to what this machine has (tests pass fakes).
    """
    if device.type != "cuda":
        return ["CPUExecutionProvider"], None
    if available is None:
        ort = require_onnxruntime("the onnxruntime backend")
        available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        return ["CPUExecutionProvider"], no_cuda_provider_note(_installed_ort_packages() if packages is None
                                                               else packages)
    options = {"device_id": str(device.index or 0)}
    wanted = [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
    # onnxruntime-gpu lists the TensorRT EP even where TensorRT's libraries are absent or of another major
    # version, and then prints a screen of load errors before falling back: ask only when it can load.
    note = None
    if "TensorrtExecutionProvider" in available:
        if tensorrt_version is False:
            from fastcifar.export.tensorrt import trt_version

            tensorrt_version = trt_version()
        blocked = _tensorrt_ep_block(tensorrt_version, ort_tensorrt_major() if built_major is False else built_major)
        if blocked is None:
            cache = str(DEFAULT_CACHE_DIR / "ort-trt")
            wanted.insert(0, ("TensorrtExecutionProvider", {**options, "trt_engine_cache_enable": "True",
                                                            "trt_engine_cache_path": cache}))
        elif tensorrt_version is not None:  # TensorRT is here but this onnxruntime cannot use it: say why
            note = f"ONNX Runtime's TensorRT provider not used: {blocked}"
    return wanted, note


def create_session(ort, path: Path, options, providers: list) -> tuple[object, str | None]:
    """An InferenceSession on exactly `providers` (with their options), never a silent fallback.

    onnxruntime retries a session whose provider fails to start with its default providers and no options
    (losing device_id: the wrong GPU on a multi-GPU machine). The providers it really got are checked against
    the ones asked for; when one is missing, the session is made again from the asked list without it, options
    kept, and the returned note names what could not start. Fallback at run time is switched off too.
    """
    def name(provider):
        return provider[0] if isinstance(provider, tuple) else provider

    session = ort.InferenceSession(str(path), options, providers=providers)
    got = session.get_providers()
    missing = [name(p) for p in providers if name(p) not in got]
    note = None
    if missing:
        kept = [p for p in providers if name(p) in got]
        session = ort.InferenceSession(str(path), options, providers=kept)
        note = f"{', '.join(missing)} could not start here (see onnxruntime's log); ran on {name(kept[0])}"
    session.disable_fallback()
    return session, note


class OnnxRuntimePredictor(Predictor):
    backend = "onnxruntime"

    def __init__(self, path: Path, device, *, isolated: bool = False, threads: int | None = None):
        from fastcifar.export.onnx import read_onnx_metadata

        ort = require_onnxruntime("the onnxruntime backend")

        super().__init__(spec_from_metadata(read_onnx_metadata(path)), path)
        self.torch_device, self.device = device, str(device)
        options = ort.SessionOptions()
        # ORT's idle worker threads spin, which slowed PyTorch in the same process ~10x (bench/README.md, "Inference
        # backends"): spinning only when the predictor has its process to itself (bench).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if isolated else "0")
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: ORT's warnings about graph rewrites are noise to users
        providers, self.note = ort_providers(device)
        try:
            self.session, started = create_session(ort, path, options, providers)
            self.note = "; ".join(n for n in (self.note, started) if n) or None
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
        self.precision = self.spec.get("precision", "fp32")
        # Inputs go where the session really runs: device-resident IO binding only with the CUDA provider in use.
        on_gpu = device.type == "cuda" and any(p in self.providers for p in ("CUDAExecutionProvider",
                                                                             "TensorrtExecutionProvider"))
        if not on_gpu:
            self.device, self.timing = "cpu", "wall"
        io = _OrtCudaIO if on_gpu else _OrtCpuIO
        self.io = io(self.session, self.input_name, self.output_name, device.index or 0)

    def to_input(self, pixels):
        return self.io.to_input(self._preprocess(pixels) if self.normalized else pixels)

    def run(self, inputs):
        return self.io.run(inputs)

    def to_numpy(self, outputs):
        return self.io.to_numpy(outputs)

    def describe(self):
        return {**super().describe(), "providers": self.providers, "provider": self.providers[0]}


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
