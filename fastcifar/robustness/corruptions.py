"""CIFAR-10-C corruptions (`corrupt`), batched in torch on the device, deterministic for a seed.

Severity parameters and arithmetic follow Hendrycks and Dietterich's `make_cifar_c.py` (hendrycks/robustness, the
script that made CIFAR-10-C); each function names its list, and where the script used skimage or PIL the torch
equivalent is exact unless its comment says otherwise. Draws come from a generator seeded per (seed, corruption,
severity), so the pixels are the same on every run but not the official files' (docs/inference.md, "Evaluate").
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from fastcifar.preprocess import area_weights

SEVERITIES = (1, 2, 3, 4, 5)


def gaussian_noise(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    c = [0.04, 0.06, .08, .09, .10][severity - 1]  # make_cifar_c.py gaussian_noise
    return (x + c * torch.randn(x.shape, generator=gen, device=x.device)).clamp(0, 1)


def shot_noise(x, severity, gen):
    c = [500, 250, 100, 75, 50][severity - 1]  # make_cifar_c.py shot_noise
    return (torch.poisson(x * c, generator=gen) / c).clamp(0, 1)


def impulse_noise(x, severity, gen):
    # make_cifar_c.py impulse_noise: skimage random_noise(mode='s&p', amount=c) on every channel value,
    # half salt (1), half pepper (0).
    c = [.01, .02, .03, .05, .07][severity - 1]
    hit = torch.rand(x.shape, generator=gen, device=x.device) < c
    salt = torch.rand(x.shape, generator=gen, device=x.device) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


def _gaussian_kernel(sigma: float, device) -> torch.Tensor:
    radius = int(4.0 * sigma + 0.5)  # scipy.ndimage's truncate=4.0, as skimage.filters.gaussian uses
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x, severity, gen):
    sigma = [.4, .6, 0.7, .8, 1][severity - 1]  # make_cifar_c.py gaussian_blur
    k = _gaussian_kernel(sigma, x.device)
    r = (len(k) - 1) // 2
    n, ch = x.shape[:2]
    y = F.pad(x, (r, r, r, r), mode="replicate")  # 'nearest' borders
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(ch, 1, 1, -1), groups=ch)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(ch, 1, -1, 1), groups=ch)
    return y.clamp(0, 1)


def contrast(x, severity, gen):
    c = [.75, .5, .4, .3, 0.15][severity - 1]  # make_cifar_c.py contrast: per-image, per-channel mean
    means = x.mean(dim=(2, 3), keepdim=True)
    return ((x - means) * c + means).clamp(0, 1)


def brightness(x, severity, gen):
    # make_cifar_c.py brightness: HSV value + c. With hue and saturation fixed, RGB scales with V (black: S = 0,
    # so it turns grey at the new V).
    c = [.05, .1, .15, .2, .3][severity - 1]
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + c).clamp(0, 1)
    return torch.where(v > 0, x * v_new / v.clamp_min(1e-12), v_new.expand_as(x)).clamp(0, 1)


def saturate(x, severity, gen):
    # make_cifar_c.py saturate: HSV saturation * c0 + c1. With hue and value fixed, each channel's distance below
    # V is proportional to S. A grey pixel has hue 0 (red) in skimage, so a raised saturation tints it red.
    c0, c1 = [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)][severity - 1]
    v = x.amax(dim=1, keepdim=True)
    s = torch.where(v > 0, (v - x.amin(dim=1, keepdim=True)) / v.clamp_min(1e-12), torch.zeros_like(v))
    s_new = (s * c0 + c1).clamp(0, 1)
    scaled = v - (v - x) * s_new / s.clamp_min(1e-12)
    grey = torch.cat([v, v * (1 - s_new), v * (1 - s_new)], dim=1)  # hue 0: red at V, the others at V(1 - S)
    return torch.where(s > 0, scaled, grey).clamp(0, 1)


def pixelate(x, severity, gen):
    # make_cifar_c.py pixelate: PIL BOX resize to int(32 c), then BOX back to 32 (area weights, exact).
    c = [0.95, 0.9, 0.85, 0.75, 0.65][severity - 1]
    size = x.shape[-1]
    small = int(size * c)
    down, up = (area_weights(a, b).to(x) for a, b in ((size, small), (small, size)))
    y = torch.einsum("ij,ncjk,lk->ncil", down, x, down)
    return torch.einsum("ij,ncjk,lk->ncil", up, y, up).clamp(0, 1)


def jpeg_compression(x, severity, gen):
    # make_cifar_c.py jpeg_compression: quality c; torchvision's libjpeg encoder/decoder instead of PIL's.
    import warnings

    quality = [80, 65, 58, 50, 40][severity - 1]
    pixels = (x * 255).to(torch.uint8)
    device = pixels.device
    with warnings.catch_warnings():  # torchvision 0.29 points at TorchCodec; its libjpeg codec still works
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import decode_jpeg, encode_jpeg

        encoded = encode_jpeg(list(pixels.cpu()), quality=quality)
        decoded = decode_jpeg(encoded)
    return torch.stack(decoded).to(device).float() / 255


CORRUPTIONS: dict[str, Callable] = {fn.__name__: fn for fn in (
    gaussian_noise, shot_noise, impulse_noise, gaussian_blur, contrast, brightness, saturate, pixelate,
    jpeg_compression)}


def corrupt(pixels: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """uint8 NHWC pixels -> uint8 NHWC pixels with corruption `name` at `severity` (1-5), deterministic for `seed`."""
    gen = torch.Generator(device=pixels.device).manual_seed(seed * 1000 + list(CORRUPTIONS).index(name) * 10
                                                           + severity)
    x = pixels.permute(0, 3, 1, 2).float() / 255
    y = CORRUPTIONS[name](x, severity, gen)
    return (y * 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()  # truncation, as np.uint8 in the script
