"""The one home of how pixels become model input: normalisation constants, the native size, the scale/shift form,
the numpy reference (`normalize_images`), the in-model pixel pipeline every PyTorch evaluation runs
(`make_pixel_pipeline`), and the decoding of exported metadata back into a model spec.

The loaders, the ONNX graph (which computes it in its own ops), the parity reference and the serving pipelines all
derive from here; a model records the mean/std it was trained with, so inference never guesses.
"""

from __future__ import annotations

import json

from fastcifar.errors import FastCifarError

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's, 0-1 scale, RGB: pretrained inits normalise with these
IMAGENET_STD = (0.229, 0.224, 0.225)
# CIFAR-10's training-set statistics (0-1 scale), as `fastcifar data` measures them: random init normalises with these.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
NATIVE_SIZE = 32  # CIFAR-10's pixels: what raw inputs are, whatever size a model trains at (it resizes inside)
# Training augmentation unless a run says otherwise (TrainConfig's crop_padding / crop_scale, every loader): a random
# crop of the image zero-padded by 4 px (torchvision's RandomCrop(32, padding=4), the plain recipe's), and for
# `--loader dali-files` a random-resized crop of 35-100 % of the image's area (bench/folder_decode.py measures it).
CROP_PADDING = 4
CROP_SCALE_MIN = 0.35
# What an exported graph takes: `raw` uint8 NHWC pixels (normalised and resized inside the graph) or `normalized`
# float NCHW input at the model's image size, already normalised.
INPUT_KINDS = ("raw", "normalized")

META_PREFIX = "fastcifar."  # ONNX metadata_props keys fastcifar writes
JSON_META_KEYS = {"class_names", "mean", "std", "image_size", "input_size", "num_classes", "test_acc",
                  "format_version", "int8_calibration"}
REQUIRED_META = ("class_names", "mean", "std")


def scale_shift(mean, std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (scale, shift) with `normalised = pixel * scale + shift` for uint8 pixels (0-255).

    The same as (pixel / 255 - mean) / std, folded into one multiply-add: what every fastcifar pipeline computes.
    """
    return tuple(1.0 / (255.0 * s) for s in std), tuple(-m / s for m, s in zip(mean, std))


def pixel_mean_std(mean, std) -> tuple[list[float], list[float]]:
    """mean/std on the 0-255 pixel scale, for operators that take them so (DALI's crop_mirror_normalize)."""
    return [255.0 * m for m in mean], [255.0 * s for s in std]


def normalize(pixels, mean, std):
    """uint8 NHWC numpy pixels -> float32 NHWC normalised numpy array (the reference of every pipeline)."""
    import numpy as np

    scale, shift = scale_shift(mean, std)
    return pixels.astype(np.float32) * np.asarray(scale, np.float32) + np.asarray(shift, np.float32)


def area_overlaps(k_in: int, k_out: int):
    """(k_out, k_in) overlap of output cells of width k_in/k_out with unit input cells; columns sum to 1.

    The exact area (box) resampling kernel: summed, it moves a 7x7 filter to 3x3 keeping its total (models/__init__.py);
    row-normalised (`area_weights`) it is PIL's BOX resize.
    """
    import torch

    edges = torch.linspace(0, k_in, k_out + 1, dtype=torch.float64)
    lo = torch.maximum(edges[:-1, None], torch.arange(k_in, dtype=torch.float64)[None, :])
    hi = torch.minimum(edges[1:, None], torch.arange(1, k_in + 1, dtype=torch.float64)[None, :])
    return (hi - lo).clamp(min=0)


def area_weights(k_in: int, k_out: int):
    """(k_out, k_in) box-resize weights: each output pixel is the area-weighted mean of the input it covers."""
    overlaps = area_overlaps(k_in, k_out)
    return overlaps / overlaps.sum(dim=1, keepdim=True)


def normalize_images(images, spec):
    """uint8 NHWC pixels -> the model's float32 NCHW input tensor at its image size (the reference preprocessing).

    numpy arithmetic here, torch ops in the exported graph (export/onnx.py's ExportModule): the parity check then
    also tests a `raw` graph's in-graph preprocessing, not just the network - both from this module's definition.
    """
    import numpy as np
    import torch

    x = normalize(images, spec.mean, spec.std)
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    if spec.image_size != t.shape[-1]:
        t = torch.nn.functional.interpolate(t, size=(spec.image_size,) * 2, mode="bilinear", align_corners=False)
    return t


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




def decode_metadata(props: dict) -> dict:
    """{'fastcifar.mean': '[...]', ...} -> {'mean': [...], ...}; keys of other producers are dropped."""
    out = {}
    for key, value in props.items():
        if key.startswith(META_PREFIX):
            name = key[len(META_PREFIX):]
            out[name] = json.loads(value) if name in JSON_META_KEYS else value
    return out


def spec_from_metadata(meta: dict) -> dict:
    """Decoded metadata (an ONNX file's or an engine sidecar's) -> the spec a predictor runs on.

    Preprocessing is never guessed: metadata without class names, mean and std is refused.
    """
    missing = [k for k in REQUIRED_META if not meta.get(k)]
    if missing:
        raise FastCifarError(f"the model's metadata lacks {', '.join(missing)}: was it exported by fastcifar "
                             "(`fastcifar export`)? Preprocessing is never guessed")
    return {"input_kind": "raw", **meta}
