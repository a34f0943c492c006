"""The one precision vocabulary: the names fastcifar takes, what each means in each stage, and the device defaults.

"Precision" means three things, each with its own list here:
  training   autocast during `fastcifar train` / `compare` (TRAIN_PRECISIONS, "auto" = the device's default)
  serving    what the PyTorch backends are cast to at inference (SERVING_PRECISIONS)
  export     the compute type inside an exported ONNX graph / TensorRT engine (EXPORT_PRECISIONS; an engine built
             from a Q/DQ graph is "int8": ENGINE_PRECISIONS)
They share one name -> torch dtype map (`torch_dtype`) and one device default (`default_precision`). The TensorRT
optimisation profile every engine is built with by default lives here too (DEFAULT_ENGINE_PROFILE), so export and
the serving cache build the same engine. Standard library only: the CLI reads the names without importing torch.
"""

from __future__ import annotations

SERVING_PRECISIONS = ("fp32", "bf16", "fp16")
TRAIN_PRECISIONS = ("auto", "bf16", "fp16", "fp32")
EXPORT_PRECISIONS = ("fp32", "fp16", "bf16")
ENGINE_PRECISIONS = (*EXPORT_PRECISIONS, "int8")  # what an ONNX file's graph types can say
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # torch's names

# TensorRT optimisation profile MIN:OPT:MAX batch sizes: batch 1 for latency, 256 (bench's and serving's usual
# chunk) as the tuned size, 1024 the largest (the throughput goal's batch).
DEFAULT_ENGINE_PROFILE = "1:256:1024"


def default_precision(device_type: str) -> str:
    """bf16 on CUDA, fp32 on the CPU - for training autocast and serving alike.

    CUDA: bf16 channels_last ResNet-18 ran 202k img/s eager / 299k compiled at inference on an H100 against fp32
    serving's 20k, and bf16 + channels_last trains at 57-77k img/s (../shared/measurements/gpu-2026-11-26.md).
    CPU: bf16 autocast measured 0.86x of fp32 on this project's AMX CPU and ~7x slower on AVX2 CPUs without AMX
    (bench/README.md), so fp32 is faster there.
    """
    return "bf16" if device_type == "cuda" else "fp32"


def torch_dtype(name: str):
    """The torch dtype of a precision name ('fp32', 'bf16', 'fp16')."""
    import torch

    return getattr(torch, DTYPE_NAMES[name])
