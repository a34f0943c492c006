"""The training levers fast CIFAR-10 recipes are known to need, each a `TrainConfig` switch, off by default.

Owns `DeviceEMA` (weight averaging without a host sync), `whiten_first_conv` (a frozen whitened stem) and
`freeze_batchnorm_scales`. The rest of the levers live where their data lives: label smoothing is the loss in
loop.py, the BatchNorm bias lr multiplier and the lr floor are in step.py (`param_groups`, `lr_lambda`), the
alternating flip is in data/loader_contract.py (`augment_params`) so both loaders follow it, translate TTA is in
evaluate.py.

Sources, read before writing this: KellerJordan/cifar10-airbench `airbench94.py` (94.01 % mean over 1,000 runs:
label smoothing 0.2, an EMA every 5 steps whose decay warms up, a frozen 2x2 whitening conv from the
eigenvectors of the first 5,000 training images' patch covariance scaled by 1/sqrt(eigenvalue + 5e-4),
BatchNorm with frozen scales and a 64x bias learning rate, flips that alternate each epoch, mirror + 1-px
translate TTA, `cudnn.benchmark`), and David Page's "How to train your ResNet" (myrtle.ai, parts 4-8: label
smoothing, frozen BN scales, CELU, the whitening stem, flip TTA). None of these is measured on fastcifar's
ResNet on a GPU yet: bench/gpu_check.sh's sweep (bench/plans/gpu.json) measures each one.
"""

from __future__ import annotations

import copy


class DeviceEMA:
    """An exponential moving average of a model's weights and buffers, updated every `every` steps on the device.

    Why not `torch.optim.swa_utils.AveragedModel`: it keeps its update count as a tensor and, for the EMA form, its
    `update_parameters` runs per-tensor ops every step; this keeps the count on the host (a Python int: no host <->
    device traffic, nothing for the GPU to wait on) and does one `torch._foreach_lerp_` over all floating tensors
    every `every` steps with the decay for those steps, `decay ** every`, so the average has the same horizon
    (~1 / (1 - decay) steps) at 1/`every` of the cost. Integer buffers (BatchNorm's num_batches_tracked) are
    copied. The first update at or after `start_step` copies the weights (an average of the random init would
    only drag the result back), as airbench starts its EMA after the first epochs.

    `module` is the averaged model (a deep copy: evaluate and save it); `update(step)` is called after each
    optimizer step with the 1-based step count.
    """

    def __init__(self, model, decay: float, *, every: int = 1, start_step: int = 0):
        import torch

        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        if every < 1:
            raise ValueError(f"EMA update interval must be >= 1 step, got {every}")
        self.decay, self.every, self.start_step = float(decay), int(every), int(start_step)
        self.module = copy.deepcopy(getattr(model, "_orig_mod", model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0  # host-side count of averaging updates done (0: not started)
        pairs = list(zip(self._tensors(self.module), self._tensors(model)))
        self._dst_float = [d for d, _ in pairs if d.is_floating_point()]
        self._src_float = [s for d, s in pairs if d.is_floating_point()]
        self._int_pairs = [(d, s) for d, s in pairs if not d.is_floating_point()]
        self._torch = torch

    @staticmethod
    def _tensors(module) -> list:
        return [*module.parameters(), *module.buffers()]

    def update(self, step: int) -> None:
        """Average the current weights in when `step` (1-based) is due: past `start_step` and a multiple of
        `every`. The first due update copies."""
        if step < self.start_step or step % self.every:
            return
        torch = self._torch
        with torch.no_grad():
            src = [s.detach() for s in self._src_float]
            if self.updates == 0:
                torch._foreach_copy_(self._dst_float, src)
            else:
                torch._foreach_lerp_(self._dst_float, src, 1.0 - self.decay ** self.every)
            for d, s in self._int_pairs:
                d.copy_(s)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        if "module" not in state:  # torch's AveragedModel, which fastcifar's --ema used before DeviceEMA
            if "n_averaged" in state:
                self.module.load_state_dict({k.removeprefix("module."): v for k, v in state.items()
                                             if k.startswith("module.")})
                self.updates = int(state["n_averaged"])
                return
            from fastcifar.errors import FastCifarError

            raise FastCifarError("the EMA state in this run's state.pt is not one fastcifar can read")
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


# ---------------------------------------------------------------------------------------------- whitening

WHITEN_EPS = 5e-4  # airbench94's: keeps the scale of near-zero-variance directions bounded
WHITEN_IMAGES = 5000  # airbench94 estimates the covariance on the first 5,000 training images


def patch_second_moment(images, kernel_size: int):
    """(D, D) uncentred second moment E[p p^T] of every kernel_size x kernel_size patch (D = 3 k^2) of the float
    NCHW `images`, patches flattened in conv-weight order (channel, row, column), as airbench94 estimates it."""
    import torch
    import torch.nn.functional as F

    n, c, h, w = images.shape
    dims, per_image = c * kernel_size ** 2, (h - kernel_size + 1) * (w - kernel_size + 1)
    # Accumulated over chunks of images: 5,000 images' patches at once would be ~4 GB for a 7x7 stem at 32 px and
    # hundreds of GB at 224 px; a chunk holds at most ~2M patch values.
    chunk = max(1, 2_000_000 // (dims * per_image))
    total = torch.zeros(dims, dims, dtype=torch.float64, device=images.device)
    for i in range(0, n, chunk):
        patches = F.unfold(images[i:i + chunk].double(), kernel_size)  # (B, D, L): D in (c, i, j) order
        flat = patches.transpose(1, 2).reshape(-1, dims)
        total += flat.T @ flat
    return total / (n * per_image)


def whitening_filters(images, kernel_size: int, eps: float = WHITEN_EPS):
    """(D, 3, k, k) filters, eigenvectors of the patch second moment scaled by 1/sqrt(eigenvalue + eps), largest
    eigenvalue first: a conv with them maps training patches to outputs with ~identity second moment."""
    import torch

    moment = patch_second_moment(images, kernel_size)
    eigenvalues, eigenvectors = torch.linalg.eigh(moment)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    filters = eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]
    return filters.reshape(-1, images.shape[1], kernel_size, kernel_size)


def whiten_first_conv(model, images, eps: float = WHITEN_EPS) -> int:
    """Set `model.conv1` to whitening filters computed from the normalised float NCHW `images` and freeze it.

    ResNet's CIFAR stem is a 3x3 conv with 64 filters; a 3x3x3 patch has D = 27 directions. The filters are the
    27 whitening filters, then their negatives (as airbench's, so the ReLU after BatchNorm keeps both signs of
    each direction), then the leading 64 - 54 = 10 again: every filter is a whitening direction, none is left
    random under a frozen layer. (The ImageNet stem's 7x7 patches have D = 147 > 64: its filters are the leading
    32 directions and their negatives.) Returns D. The weights are a deterministic function of the images, so a resumed
    run recomputes the same layer (and then loads it from its state anyway).
    """
    import torch

    conv = model.conv1
    out_channels, _, k, _ = conv.weight.shape
    filters = whitening_filters(images, k, eps)
    leading = filters[:max(1, min(len(filters), out_channels // 2))]  # room for each direction and its negative
    bank = torch.cat([leading, -leading])
    repeats = -(-out_channels // len(bank))
    weight = torch.cat([bank] * repeats)[:out_channels]
    with torch.no_grad():
        conv.weight.copy_(weight.to(conv.weight.dtype))
    conv.weight.requires_grad_(False)
    return len(filters)


def freeze_batchnorm_scales(model) -> int:
    """Freeze every BatchNorm scale (weight) at its current value (1 for a random init, as airbench's BatchNorm
    without a weight); returns how many tensors were frozen. The optimizer then never sees them."""
    import torch

    frozen = 0
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.weight is not None:
            module.weight.requires_grad_(False)
            frozen += 1
    return frozen


def batchnorm_bias_ids(model) -> set[int]:
    """id() of every BatchNorm bias tensor: the group `bn_bias_lr_scale` multiplies."""
    import torch

    return {id(m.bias) for m in model.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.bias is not None}
