"""The TensorRT engine runner behind the `tensorrt` inference backend (TensorRT 10 and 11 Python APIs).

Owns `EngineRunner` (one execution context: torch CUDA tensors in and out, no host round trip, on a dedicated
stream ordered against torch's current one, so CUDA events on that stream still time the engine) and
`TensorRTPredictor` (the Predictor around it). Loading an engine and its compatibility checks are
export/tensorrt.py's `load_engine`. Only the binding logic has run, against a fake engine; the rest needs a GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastcifar.errors import FastCifarError
from fastcifar.preprocess import NATIVE_SIZE, spec_from_metadata
from fastcifar.serve.base import Predictor
from fastcifar.serve.torch_runner import make_pixel_pipeline

# trt.DataType member name -> torch dtype name (getattr'd lazily: torch is imported inside the functions).
TRT_TO_TORCH = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
                "INT32": "int32", "INT64": "int64", "BOOL": "bool"}


def torch_dtype(trt_dtype):
    """torch dtype for a trt.DataType (member or its name); FastCifarError for types torch cannot hold."""
    import torch

    name = getattr(trt_dtype, "name", None) or str(trt_dtype).rsplit(".", 1)[-1]
    if name not in TRT_TO_TORCH:
        raise FastCifarError(f"the engine uses tensor type {name}, which fastcifar's runner does not feed")
    return getattr(torch, TRT_TO_TORCH[name])


def _is_input(engine, name: str) -> bool:
    mode = engine.get_tensor_mode(name)
    return (getattr(mode, "name", None) or str(mode).rsplit(".", 1)[-1]) == "INPUT"


class DedicatedStream:
    """The engine's own CUDA stream, ordered against torch's current stream on both sides.

    Why not torch's current stream: that is the default stream (0) unless someone set one, and TensorRT on the
    default stream adds device-wide synchronisations (its docs warn about it), which also skews the CUDA-event
    timings `fastcifar bench` takes. The engine waits for whatever produced its input on the current stream,
    and the current stream waits for the engine, so callers and events on the current stream see the result.
    """

    def __init__(self):
        self.stream = None

    def begin(self, x) -> int:
        import torch

        if self.stream is None:
            self.stream = torch.cuda.Stream(device=x.device)
        self.stream.wait_stream(torch.cuda.current_stream(x.device))
        x.record_stream(self.stream)  # the allocator keeps x until the engine has read it
        return self.stream.cuda_stream

    def end(self, x, out) -> None:
        import torch

        current = torch.cuda.current_stream(x.device)
        current.wait_stream(self.stream)
        out.record_stream(current)


class EngineRunner:
    """One execution context of a one-input, one-output engine (what fastcifar exports)."""

    def __init__(self, engine, *, stream: DedicatedStream | None = None):
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if _is_input(engine, n)]
        outputs = [n for n in names if not _is_input(engine, n)]
        if len(inputs) != 1 or len(outputs) != 1:
            raise FastCifarError(f"expected an engine with one input and one output, found inputs {inputs} and "
                                 f"outputs {outputs}")
        self.engine, self.input, self.output = engine, inputs[0], outputs[0]
        self.input_dtype = torch_dtype(engine.get_tensor_dtype(self.input))
        self.output_dtype = torch_dtype(engine.get_tensor_dtype(self.output))
        min_shape, _, max_shape = engine.get_tensor_profile_shape(self.input, 0)
        self.min_batch, self.max_batch = int(min_shape[0]), int(max_shape[0])
        self.item_shape = tuple(int(d) for d in max_shape[1:])
        self.context = engine.create_execution_context()
        if self.context is None:
            raise FastCifarError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = stream or DedicatedStream()

    def check(self, x) -> None:
        if x.dtype != self.input_dtype or tuple(x.shape[1:]) != self.item_shape:
            raise FastCifarError(f"the engine takes {self.input_dtype} (N, {', '.join(map(str, self.item_shape))}); "
                                 f"got {x.dtype} {tuple(x.shape)}")
        if not self.min_batch <= x.shape[0] <= self.max_batch:
            raise FastCifarError(f"batch {x.shape[0]} is outside the engine's profile {self.min_batch}.."
                                 f"{self.max_batch} (rebuild it with a wider --batch MIN:OPT:MAX)")

    def __call__(self, x):
        """Queue the engine on `x` (contiguous, on the engine's GPU); returns the output tensor (not yet synced)."""
        import torch

        x = x.contiguous()
        self.check(x)
        if not self.context.set_input_shape(self.input, tuple(x.shape)):
            raise FastCifarError(f"TensorRT refused input shape {tuple(x.shape)}")
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=self.output_dtype, device=x.device)
        self.context.set_tensor_address(self.input, x.data_ptr())
        self.context.set_tensor_address(self.output, out.data_ptr())
        if not self.context.execute_async_v3(self.stream.begin(x)):
            raise FastCifarError("TensorRT failed to execute the engine (its log is above)")
        self.stream.end(x, out)
        return out


class TensorRTPredictor(Predictor):
    backend = "tensorrt"
    timing = "events"

    def __init__(self, path: Path, device):
        import torch

        from fastcifar.export.tensorrt import load_engine

        torch.cuda.set_device(device)  # the engine's memory and context belong to this GPU
        engine, sidecar, self.warnings = load_engine(path)
        super().__init__(spec_from_metadata(sidecar.get("metadata") or {}), path)
        self.torch_device, self.device = device, str(device)
        self.runner = EngineRunner(engine)
        self.batch_limit = self.runner.max_batch
        self.max_batch = min(self.max_batch, self.batch_limit)
        self.preprocess = None
        if self.spec.get("input_kind") == "normalized":  # float NCHW input: same preprocessing as the reference
            self.input_size = NATIVE_SIZE
            self.preprocess = make_pixel_pipeline(torch.nn.Identity(), self.spec["mean"], self.spec["std"],
                                                  int(self.spec["image_size"])).to(device)

    def to_input(self, pixels: np.ndarray):
        import torch

        x = torch.from_numpy(pixels).to(self.torch_device)
        if self.preprocess is not None:
            with torch.inference_mode():
                x = self.preprocess(x).to(self.runner.input_dtype).contiguous()
        return x

    def run(self, inputs):
        return self.runner(inputs)

    def to_numpy(self, outputs) -> np.ndarray:
        return outputs.float().cpu().numpy()

    def synchronize(self) -> None:
        import torch

        torch.cuda.synchronize(self.torch_device)

    def describe(self) -> dict:
        return {**super().describe(), "batch_limit": self.batch_limit, "warnings": list(self.warnings)}
