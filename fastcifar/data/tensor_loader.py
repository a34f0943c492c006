"""The pure-torch loader (`TensorLoader`): the whole uint8 dataset resident on the device, augmented a batch at a time.

Per batch: one gather that crops *and* flips (a linear index into the zero-padded images), one affine normalise,
an optional bilinear resize and a dtype cast - no worker processes, no per-sample Python. Order and augmentation
come from `plan.epoch_plan`, as for the DALI loader, so both yield the same pixels for a (seed, epoch).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from fastcifar.data.loader_contract import BaseLoader, LoaderOptions, epoch_plan
from fastcifar.preprocess import scale_shift

class TensorLoader(BaseLoader):
    """Loader contract of `fastcifar.data.loader_contract` over uint8 (N,H,W,3) `images` kept on `device`."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, options: LoaderOptions, device="cpu"):
        super().__init__(images, labels, options, device)
        self._h, self._w = images.shape[1:3]
        pad = options.crop_padding
        self._ph, self._pw = self._h + 2 * pad, self._w + 2 * pad
        data = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        # Zero padding (torchvision RandomCrop(padding=4)'s default) done once for the whole dataset; the
        # flat (pixels, 3) view lets one index_select fetch every crop, flipped or not, in a single pass (~10x
        # faster than 3-tensor advanced indexing on the CPU: bench/README.md, "Loaders").
        self._pixels = F.pad(data, (0, 0, pad, pad, pad, pad)).reshape(-1, 3)
        # (x / 255 - mean) / std as one multiply-add: x * scale + shift (fastcifar/preprocess.py).
        scale, shift = scale_shift(options.mean, options.std)
        self._scale = torch.tensor(scale, dtype=torch.float32, device=self.device)
        self._shift = torch.tensor(shift, dtype=torch.float32, device=self.device)
        self._rows = torch.arange(self._h, device=self.device)
        self._cols = torch.arange(self._w, device=self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        plan = epoch_plan(self._n, self.options, self.epoch)
        # One host-to-device copy of the plan per epoch; batches then slice it on the device.
        order, dy, dx, flip = (torch.from_numpy(a).to(self.device) for a in (plan.order, plan.dy, plan.dx, plan.flip))
        for b in range(plan.num_batches):
            s = plan.batch(b)
            yield self._batch(self._pixel_index(order[s], dy[s], dx[s], flip[s])), self._labels[order[s]]

    def _pixel_index(self, order, dy, dx, flip) -> torch.Tensor:
        """(B, H, W) flat indices into the padded pixels: crop at (dy, dx); a flip reads columns right to left."""
        rows = dy[:, None] + self._rows
        cols = torch.where(flip[:, None], dx[:, None] + (self._w - 1 - self._cols), dx[:, None] + self._cols)
        base = order * (self._ph * self._pw)
        return base[:, None, None] + rows[:, :, None] * self._pw + cols[:, None, :]

    def _batch(self, index: torch.Tensor) -> torch.Tensor:
        """Gather (B,H,W,3) uint8, normalise, resize, cast; returns NCHW (channels_last strides when asked)."""
        b = index.shape[0]
        x = self._pixels.index_select(0, index.reshape(-1)).view(b, self._h, self._w, 3)
        # NHWC memory permuted to NCHW *is* channels_last: no copy needed for the default layout.
        x = torch.addcmul(self._shift, x.float(), self._scale).permute(0, 3, 1, 2)
        size = self.options.image_size
        if (size, size) != (self._h, self._w):
            # Bilinear is linear with weights summing to 1, so it commutes with the per-channel affine
            # normalise; resizing after it keeps the cheap work at 32 px.
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
        memory_format = torch.channels_last if self.options.channels_last else torch.contiguous_format
        return x.to(dtype=self._dtype, memory_format=memory_format)
