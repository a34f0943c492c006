"""The NVIDIA DALI loader (`DaliLoader`): one pipeline built once, fed the epoch's batches by an external source.

The pipeline is crop_mirror_normalize (the planned crop of the zero-padded image, flip, mean/std) -> optional
resize, on the GPU when the device is CUDA and as a CPU pipeline otherwise. Order, crops and flips come from
`plan.epoch_plan`, as for the tensor loader, so both give the same pixels for a seed. Each epoch ends with
StopIteration from the source and a `reset()`; one iteration at a time per loader; every batch is copied out of
DALI's reused buffers into a fresh torch tensor.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch

from fastcifar.data.loader_contract import BaseLoader, EpochPlan, LoaderOptions, epoch_plan
from fastcifar.errors import FastCifarError
from fastcifar.preprocess import pixel_mean_std


def _dali_failed(when: str, exc: BaseException) -> FastCifarError:
    """DALI's GPU pipeline has not run on a GPU in this project yet: when it fails, say what to do instead."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return FastCifarError(f"the DALI loader failed while {when} ({type(exc).__name__}: {first[:300]}); use "
                          "--loader tensor (the measured default) instead")


def pipeline_settings(options: LoaderOptions, device: torch.device) -> dict:
    """`pipeline_def` arguments of both DALI loaders (this one and dali_files.py): the batch, up to 4 CPU threads,
    the GPU (None: a CPU pipeline), the seed, two batches in flight."""
    device_id = None
    if device.type == "cuda":
        device_id = device.index if device.index is not None else torch.cuda.current_device()
    return dict(batch_size=options.batch_size, num_threads=max(1, min(4, os.cpu_count() or 1)), device_id=device_id,
                seed=options.seed, prefetch_queue_depth=2)


class DaliLoader(BaseLoader):
    """Loader contract of `fastcifar.data.loader_contract` over uint8 (N,H,W,3) `images`, augmented by DALI."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, options: LoaderOptions, device="cpu"):
        super().__init__(images, labels, options, device)
        pad = options.crop_padding
        self._shape = images.shape[1:3]
        # Padded once with zeros (as RandomCrop pads), so augmenting is one DALI operator per sample: fewer
        # CPU-seconds per image than fn.slice's padding (bench/README.md, "Loaders"), for 1.56x the host memory.
        self._padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        self._plan: EpochPlan | None = None  # set only while an epoch is being iterated
        try:
            self._pipe = self._build()
        except Exception as exc:  # noqa: BLE001 - DALI raises RuntimeError and its own types
            raise _dali_failed("building its pipeline", exc) from exc

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._plan is not None:
            # An earlier iteration was abandoned mid-epoch without being closed: its queued batches belong
            # to another plan, so end that epoch before starting this one.
            self._end_epoch()
        plan = epoch_plan(self._n, self.options, self.epoch)
        order = torch.from_numpy(plan.order).to(self.device)
        self._plan = plan
        try:
            for b in range(plan.num_batches):
                if self._plan is not plan:
                    raise RuntimeError("this DaliLoader iteration was superseded by a newer one; "
                                       "iterate one epoch at a time")
                try:
                    (images,) = self._run()
                except StopIteration:
                    raise
                except Exception as exc:  # noqa: BLE001
                    raise _dali_failed(f"producing batch {b + 1} of epoch {self.epoch + 1}", exc) from exc
                yield self._to_torch(images), self._labels[order[plan.batch(b)]]
        finally:
            # Also reached when the consumer stops early (the generator is closed).
            if self._plan is plan:
                self._end_epoch()

    # ------------------------------------------------------------------------------------------ pipeline

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        opts, gpu = self.options, self.device.type == "cuda"
        h, w = self._shape
        pixel_mean, pixel_std = pixel_mean_std(opts.mean, opts.std)

        @pipeline_def(**pipeline_settings(opts, self.device))
        def augment():
            # An external source, not a DALI reader: fn.random_shuffle only shuffles inside a small buffer (DALI
            # issues #2688, #3902), and the plan is a global permutation per (seed, epoch), sharded by rank.
            images, pos_y, pos_x, mirror = fn.external_source(
                source=self._source, num_outputs=4, batch=True, batch_info=True,
                layout=["HWC", "", "", ""], dtype=[types.UINT8, types.FLOAT, types.FLOAT, types.INT32])
            if gpu:
                images = images.gpu()  # crop positions and flips stay CPU argument inputs, as DALI requires
            images = fn.crop_mirror_normalize(
                images, crop=[h, w], crop_pos_y=pos_y, crop_pos_x=pos_x, mirror=mirror, dtype=types.FLOAT,
                output_layout="HWC", mean=pixel_mean, std=pixel_std)
            if (opts.image_size, opts.image_size) != (h, w):
                images = fn.resize(images, size=[opts.image_size, opts.image_size],
                                   interp_type=types.INTERP_LINEAR, antialias=False)
            return images

        pipe = augment()
        pipe.build()
        return pipe

    def _source(self, info):
        """Batch `info.iteration` of the current plan: padded uint8 images, crop positions, mirror flags."""
        plan = self._plan
        if plan is None or info.iteration >= plan.num_batches:
            raise StopIteration
        rows = plan.batch(info.iteration)
        # DALI places the crop at round(pos * (padded - crop)) = round(pos * 2 * pad): pos = d / (2 * pad)
        # lands exactly on offset d (max(.., 1): no padding means every offset is 0).
        span = max(2 * self.options.crop_padding, 1)
        pos_y, pos_x = (np.asarray(d[rows], dtype=np.float32) / span for d in (plan.dy, plan.dx))
        return self._padded[plan.order[rows]], pos_y, pos_x, plan.flip[rows].astype(np.int32)

    def _run(self):
        """One pipeline step. On CUDA the outputs come on torch's current stream (`run(cuda_stream)`): without a
        stream DALI 2.4's run() is host-synchronous, blocking the host every batch instead of letting the next
        batch overlap the training step. The copy in `_to_torch` is queued on that same stream."""
        if self.device.type == "cuda":
            return self._pipe.run(torch.cuda.current_stream(self.device).cuda_stream)
        return self._pipe.run()

    def _end_epoch(self) -> None:
        """Make the callback end the epoch, discard the (at most prefetch-depth) queued batches, reset."""
        self._plan = None
        while True:
            try:
                self._pipe.run()
            except StopIteration:
                break
        self._pipe.reset()

    # ------------------------------------------------------------------------------------------ output

    def _to_torch(self, images) -> torch.Tensor:
        """Copy DALI's (B,H,W,3) float output into a fresh NCHW torch tensor of the requested dtype/layout.

        As DALIGenericIterator does: `run()` returns outputs ready for the host (DALI's own stream has
        finished this batch; the next one is already in flight), and on CUDA the copy is queued on torch's
        current stream, so it is ordered before whatever the training step does with the tensor.
        """
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = images.as_tensor()
        out = torch.empty(dense.shape(), dtype=torch.float32, device=self.device)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        feed_ndarray(dense, out, cuda_stream=stream)
        # NHWC memory permuted to NCHW is channels_last already; DALI has no bfloat16, so torch casts.
        memory_format = torch.channels_last if self.options.channels_last else torch.contiguous_format
        return out.permute(0, 3, 1, 2).to(dtype=self._dtype, memory_format=memory_format)
