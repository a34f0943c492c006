"""The PyTorch backends `torch` and `torch-compiled`: the run's model.safetensors behind the training loader's exact
preprocessing (`make_pixel_pipeline`), and the fp32 switch that makes the parity reference really fp32.
"""

from __future__ import annotations

from pathlib import Path

from fastcifar.preprocess import NATIVE_SIZE, scale_shift
from fastcifar.serve.base import Predictor


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
            scale, shift = scale_shift(mean, std)  # NHWC broadcasting: one value per channel, last axis
            self.register_buffer("scale", torch.tensor(scale).view(1, 1, 1, 3), persistent=False)
            self.register_buffer("shift", torch.tensor(shift).view(1, 1, 1, 3), persistent=False)

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
        super().__init__({**meta, **spec.to_dict(), "input_size": NATIVE_SIZE}, path)
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
