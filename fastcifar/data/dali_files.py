"""`--loader dali-files` (`DaliFileLoader`): DALI reads and decodes an image folder's files itself every epoch -
nvJPEG on CUDA ("mixed"), DALI's CPU decoders otherwise - with random-resized-crop and flip on the device.

It follows the loader contract of data/loader_contract.py over exactly the files data/folder.py accepted, but unlike the
cache-fed loaders its order is DALI's own per-epoch shuffle from the seed and its pixels are not the tensor
loader's. What a user sees, and its measurement: docs/training.md, "Loaders".
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from fastcifar.data.loader_contract import LoaderOptions, num_batches
from fastcifar.errors import FastCifarError
from fastcifar.preprocess import pixel_mean_std

# What DALI's image decoder reads (its documentation's list); anything else is refused up front.
DALI_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".pnm", ".ppm", ".pgm", ".pbm",
                           ".jp2", ".j2k", ".webp"})


class DaliFileLoader:
    """The loader contract over image files: (paths, labels) in, normalised batches out."""

    def __init__(self, files: list[str | Path], labels: np.ndarray, options: LoaderOptions, device="cpu"):
        from fastcifar.data.loaders import dali_available

        if not dali_available():
            from fastcifar.extras import DALI_INSTALL

            raise FastCifarError(f"--loader dali-files needs NVIDIA DALI, which is not installed; {DALI_INSTALL} (or "
                                 "use --loader tensor)")
        files = [str(f) for f in files]
        if len(files) != len(labels) or not files:
            raise FastCifarError(f"{len(files)} files but {len(labels)} labels: the loader needs one label per file")
        odd = [f for f in files if Path(f).suffix.lower() not in DALI_SUFFIXES]
        if odd:
            raise FastCifarError(f"DALI cannot decode {odd[0]} ({len(odd)} such file(s)): use --loader tensor, which "
                                 "trains on the decoded cache")
        self.options = options
        self.batch_size = options.batch_size
        self.device = torch.device(device)
        self.epoch = 0
        self._n = len(files)
        self._len = num_batches(self._n, options)
        if options.train and self._len < 1:
            raise FastCifarError(f"{self._n} images cannot fill one batch of {options.batch_size} per rank")
        self._dtype = getattr(torch, options.dtype)
        try:
            self._iterator = self._build(files, np.asarray(labels, np.int32))
        except FastCifarError:
            raise
        except Exception as exc:  # noqa: BLE001 - DALI raises RuntimeError and its own types
            raise FastCifarError(f"the DALI file pipeline could not be built ({type(exc).__name__}: "
                                 f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}); use "
                                 "--loader tensor") from None

    def __len__(self) -> int:
        return self._len

    def set_epoch(self, epoch: int) -> None:
        # The reader reshuffles after every epoch itself (shuffle_after_epoch): reproducible from the start of a
        # run, but it cannot jump to an arbitrary epoch.
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        memory_format = torch.channels_last if self.options.channels_last else torch.contiguous_format
        batches = self._iterator  # next() only: DALI's __iter__ would try a reset, which it ignores mid-epoch
        count, finished = 0, False
        try:
            while True:
                try:
                    batch = next(batches)
                except StopIteration:  # auto_reset: the iterator is ready for the next epoch
                    finished = True
                    return
                except Exception as exc:  # noqa: BLE001 - a file DALI could not read or decode mid-epoch
                    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                    raise FastCifarError(f"DALI failed to read or decode a file in epoch {self.epoch + 1} ({first}); "
                                         "use --loader tensor, which trains on the decoded cache") from None
                if count >= self._len:  # a shard's epoch one batch longer than this rank's share: not yielded
                    continue
                count += 1
                images, labels = batch[0]["images"], batch[0]["labels"]
                images = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
                yield (images.to(dtype=self._dtype, memory_format=memory_format),
                       labels.to(self.device).reshape(-1).long())
        finally:
            # A consumer that stopped early: DALI's reset() is ignored mid-epoch, so the rest of the epoch is read
            # and dropped, and the next iteration starts a new epoch (on every rank alike).
            while not finished:
                try:
                    next(batches)
                except StopIteration:
                    finished = True
                except Exception:  # noqa: BLE001 - the epoch already failed with its own message
                    break

    def _build(self, files: list[str], labels: np.ndarray):
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        from fastcifar.data.dali_loader import pipeline_settings

        opts, gpu = self.options, self.device.type == "cuda"
        size = opts.image_size
        mean, std = pixel_mean_std(opts.mean, opts.std)

        @pipeline_def(**pipeline_settings(opts, self.device))
        def pipeline():
            encoded, label = fn.readers.file(files=files, labels=labels.tolist(), name="Reader",
                                             shard_id=opts.rank, num_shards=opts.world_size,
                                             random_shuffle=False, shuffle_after_epoch=opts.train,
                                             seed=opts.seed, pad_last_batch=not opts.train)
            images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB)
            if opts.train:
                images = fn.random_resized_crop(images, size=[size, size], random_area=list(opts.crop_scale))
                mirror = fn.random.coin_flip(probability=0.5) if opts.flip else 0
            else:
                images = fn.resize(images, resize_shorter=size)
                mirror = 0
            images = fn.crop_mirror_normalize(images, crop=[size, size], mirror=mirror, dtype=types.FLOAT,
                                              output_layout="HWC", mean=mean, std=std)
            return images, label

        pipe = pipeline()
        pipe.build()
        policy = LastBatchPolicy.DROP if opts.train else LastBatchPolicy.PARTIAL
        return DALIGenericIterator([pipe], ["images", "labels"], reader_name="Reader", auto_reset=True,
                                   last_batch_policy=policy)
