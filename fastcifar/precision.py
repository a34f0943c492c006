"""The one precision vocabulary: the names fastcifar takes, what each means in each stage, and the device defaults.

Three lists: training autocast (TRAIN_PRECISIONS, "auto" = the device default), the serving cast of the PyTorch
backends (SERVING_PRECISIONS), and an exported graph's or engine's types (EXPORT_PRECISIONS, ENGINE_PRECISIONS);
one name -> dtype map (`torch_dtype`), one device default (`default_precision`) and the default TensorRT profile.
Standard library only: the CLI reads the names without importing torch. docs/inference.md, "Precision".
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
    """bf16 on CUDA, fp32 on the CPU - for training autocast and serving alike. The first GPU run measured bf16 far
    faster on an H100 (docs/inference.md, "Precision"); on the CPU fp32 measured faster (docs/training.md,
    "Precision and compile switches")."""
    return "bf16" if device_type == "cuda" else "fp32"


def torch_dtype(name: str):
    """The torch dtype of a precision name ('fp32', 'bf16', 'fp16')."""
    import torch

    return getattr(torch, DTYPE_NAMES[name])
