"""The PyTorch backends `torch` and `torch-compiled`: the run's model.safetensors behind the training loader's exact
preprocessing (`make_pixel_pipeline`), and the fp32 switch that makes the parity reference really fp32.
"""

from __future__ import annotations

from pathlib import Path

from fastcifar.preprocess import NATIVE_SIZE, scale_shift
from fastcifar.serve.base import Predictor


def make_pixel_pipeline(model, mean, std, image_size: int, dtype=None):
    """nn.Module: uint8 NHWC pixels -> float32 logits, with the training loader's exact preprocessing.

    Same arithmetic as data/tensor_loader.py (one addcmul normalise at 32 px, then bilinear resize without
    antialias when the model runs larger), so the reference sees what the model saw in training. With `dtype`
    (a model cast to bf16/fp16) the normalised input is cast after the fp32 preprocessing, and the logits are
    returned as float32 whatever the model computed in.
    """
    import torch
    import torch.nn.functional as F

    class PixelPipeline(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            scale, shift = scale_shift(mean, std)  # NHWC broadcasting: one value per channel, last axis
            self.register_buffer("scale", torch.tensor(scale).view(1, 1, 1, 3), persistent=False)
            self.register_buffer("shift", torch.tensor(shift).view(1, 1, 1, 3), persistent=False)

        def forward(self, pixels):
            # NHWC permuted to NCHW is channels_last memory: no copy before the first conv.
            x = torch.addcmul(self.shift, pixels.float(), self.scale).permute(0, 3, 1, 2)
            if x.shape[-1] != image_size or x.shape[-2] != image_size:
                x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                                  antialias=False)
            if dtype is not None:
                x = x.to(dtype)
            return self.model(x.contiguous(memory_format=torch.channels_last)).float()

    return PixelPipeline().eval()


# Serving precisions of the PyTorch backends: the model is cast (not autocast): no per-op casting decisions at
# inference, and the weights live in the smaller type. fp32 is the parity reference.
TORCH_PRECISIONS = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


def compile_mode(device_type: str) -> str | None:
    """torch.compile mode for serving: CUDA graphs on CUDA ('reduce-overhead': one graph per batch size replays
    the whole forward with one launch, which is what latency-bound small batches need); torch's default on the
    CPU. Not yet measured on a GPU (bench/gpu_check.sh measures it against the 0.3 ms batch-1 goal)."""
    return "reduce-overhead" if device_type == "cuda" else None


class TorchPredictor(Predictor):
    backend = "torch"

    def __init__(self, path: Path, device, *, compile_model: bool = False, precision: str = "fp32"):
        import torch

        from fastcifar.models import load_model

        self.torch_device = device
        self.device = str(device)
        self.precision = precision
        model, spec, meta = load_model(path, device=device)
        super().__init__({**meta, **spec.to_dict(), "input_size": NATIVE_SIZE}, path)
        dtype = getattr(torch, TORCH_PRECISIONS[precision]) if TORCH_PRECISIONS[precision] else None
        model = model.to(dtype=dtype, memory_format=torch.channels_last)  # channels_last: faster convs, H100 + CPU
        self.pipeline = make_pixel_pipeline(model, spec.mean, spec.std, spec.image_size, dtype).to(device)
        if compile_model:
            self.backend = "torch-compiled"
            # Static shapes: each batch size compiles once; bench keeps those compiles out of its timing.
            self.pipeline = torch.compile(self.pipeline, dynamic=False, mode=compile_mode(device.type))
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
