"""The loader contract: `LoaderOptions`, the `Loader` interface, `epoch_plan` (the per-epoch order, crop offsets and
flips every loader follows) and `BaseLoader` (what the loaders share); `loaders.make_loader` picks one.

A loader yields `(images, labels)` on the training device: normalised float images (`dtype`, NCHW, channels_last
when asked) at `image_size`, int64 labels; `len` is batches per epoch, `set_epoch(e)` reshuffles from (seed, e),
each torchrun rank gets a disjoint shard. Training loaders augment, shuffle and drop the ragged last batch;
evaluation loaders yield every image once. The DALI and tensor loaders draw their randomness only from
`epoch_plan`, so they produce the same pixels for a (seed, epoch) and the tests compare them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np

from fastcifar.errors import FastCifarError
from fastcifar.preprocess import CIFAR_MEAN, CIFAR_STD, CROP_PADDING, CROP_SCALE_MIN, NATIVE_SIZE

LOADER_DTYPES = ("float32", "bfloat16", "float16")


class Loader(Protocol):
    batch_size: int

    def __iter__(self) -> Iterator[tuple["object", "object"]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


@dataclass(frozen=True)
class LoaderOptions:
    """Everything a loader needs besides the data itself (shared by both implementations)."""

    batch_size: int
    train: bool
    image_size: int = NATIVE_SIZE
    mean: tuple[float, float, float] = CIFAR_MEAN  # 0-1 scale
    std: tuple[float, float, float] = CIFAR_STD
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    channels_last: bool = True
    crop_padding: int = CROP_PADDING
    crop_scale: tuple[float, float] = (CROP_SCALE_MIN, 1.0)  # random-resized crop's area range (dali-files)
    flip: bool = True
    alternating_flip: bool = False  # flips alternate per image from epoch to epoch (augment_params)
    dtype: str = "float32"  # "float32" | "bfloat16" | "float16"

    def __post_init__(self):
        if self.batch_size < 1:
            raise FastCifarError(f"batch size must be >= 1, got {self.batch_size}")
        if not 0 <= self.rank < self.world_size:
            raise FastCifarError(f"rank {self.rank} is outside world size {self.world_size}")
        if self.image_size < 1:
            raise FastCifarError(f"image size must be >= 1, got {self.image_size}")
        if self.crop_padding < 0:
            raise FastCifarError(f"crop padding must be >= 0, got {self.crop_padding}")
        if self.seed < 0:  # numpy's SeedSequence (and DALI) refuse negative seeds
            raise FastCifarError(f"seed must be >= 0, got {self.seed}")
        if self.dtype not in LOADER_DTYPES:
            raise FastCifarError(f"unknown loader dtype '{self.dtype}' (choose from {', '.join(LOADER_DTYPES)})")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise FastCifarError(f"mean and std need 3 values each, std > 0; got mean={self.mean} std={self.std}")


def shard_indices(n: int, options: LoaderOptions, epoch: int) -> np.ndarray:
    """This rank's sample order for `epoch`: a global permutation from (seed, epoch), split across ranks.

    Training: every rank gets the same number of samples (the remainder after an even split is dropped,
    so no sample is duplicated across GPUs). Evaluation: no shuffle, rank r takes indices r, r+W, ...
    so every image is seen exactly once across ranks.
    """
    if options.train:
        order = np.random.default_rng([options.seed, epoch]).permutation(n)
        per_rank = n // options.world_size
        return order[options.rank * per_rank:(options.rank + 1) * per_rank]
    return np.arange(options.rank, n, options.world_size)


def augment_params(n: int, seed: int, epoch: int, *, padding: int = 4, flip: bool = True,
                   alternating_flip: bool = False):
    """Per-image crop offsets and flips for `epoch`, indexed by dataset index: (dy, dx, flipped).

    dy, dx in 0..2*padding are the top-left corner of the crop inside the zero-padded image (padding means
    no shift); `flipped` is a bool per image (all False when `flip` is off). Indexed by dataset index rather
    than by position in a shard, so an image gets the same augmentation whatever the world size. The stream
    [seed, epoch, 1] is independent of the [seed, epoch] permutation in `shard_indices`.

    `alternating_flip` (airbench94): epoch 0's random flips, then every image mirrored relative to them on odd
    epochs and as in epoch 0 on even ones, so over any two consecutive epochs each image is seen both ways (random
    flips repeat the same view in ~half the pairs). Crops stay as without it.
    """
    rng = np.random.default_rng([seed, epoch, 1])
    # Offsets and flips are always drawn, so turning flips off leaves the crops of a seed unchanged.
    dy, dx = rng.integers(0, 2 * padding + 1, size=(2, n))
    flipped = rng.random(n) < 0.5
    if alternating_flip:
        first = np.random.default_rng([seed, 0, 1])
        first.integers(0, 2 * padding + 1, size=(2, n))  # skip epoch 0's offsets: its flips come next
        flipped = (first.random(n) < 0.5) ^ bool(epoch % 2)
    return dy, dx, flipped & flip


@dataclass(frozen=True)
class EpochPlan:
    """What one rank yields in one epoch, sample by sample, in order (host arrays shared by both loaders)."""

    order: np.ndarray  # dataset indices
    dy: np.ndarray  # crop row offset inside the zero-padded image, 0..2*padding
    dx: np.ndarray  # crop column offset, likewise
    flip: np.ndarray  # bool: mirror left-right after the crop
    num_batches: int
    batch_size: int

    def batch(self, b: int) -> slice:
        """Positions of batch `b` in the plan's arrays (the last eval batch may be short)."""
        return slice(b * self.batch_size, min((b + 1) * self.batch_size, len(self.order)))


def num_batches(n: int, options: LoaderOptions) -> int:
    """Batches per epoch on this rank: training drops the ragged last batch, evaluation keeps it."""
    if options.train:
        return n // options.world_size // options.batch_size
    per_rank = len(range(options.rank, n, options.world_size))  # the sizes shard_indices gives, uncomputed
    return -(-per_rank // options.batch_size)


def epoch_plan(n: int, options: LoaderOptions, epoch: int) -> EpochPlan:
    """This rank's order and augmentation for `epoch`; evaluation is the centre crop, unflipped, in order."""
    order = shard_indices(n, options, epoch)
    batches = num_batches(n, options)
    if options.train:
        order = order[:batches * options.batch_size]  # the ragged tail is dropped, never padded
        dy, dx, flip = augment_params(n, options.seed, epoch, padding=options.crop_padding, flip=options.flip,
                                      alternating_flip=options.alternating_flip)
        dy, dx, flip = dy[order], dx[order], flip[order]
    else:
        dy = dx = np.full(len(order), options.crop_padding)
        flip = np.zeros(len(order), dtype=bool)
    return EpochPlan(order=order, dy=dy, dx=dx, flip=flip, num_batches=batches, batch_size=options.batch_size)


def check_arrays(images, labels, options: LoaderOptions) -> None:
    """Refuse data a loader cannot serve, with a message instead of a shape error deep inside an op."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        found = f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}"
        raise FastCifarError(f"loader images must be a uint8 array (N, H, W, 3), found {found}")
    if np.ndim(labels) != 1 or len(labels) != len(images):
        raise FastCifarError(f"loader got {len(images)} images but labels of shape {np.shape(labels)}")
    if len(images) == 0:
        raise FastCifarError("loader got an empty dataset")
    if options.train and num_batches(len(images), options) == 0:
        per_rank = len(images) // options.world_size
        raise FastCifarError(f"{per_rank} training images per rank cannot fill one batch of {options.batch_size}; "
                             "lower the batch size")


class BaseLoader:
    """What both loaders share: the checked options, the device, labels on it, the epoch counter and length."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, options: LoaderOptions, device="cpu"):
        import torch

        check_arrays(images, labels, options)
        self.options = options
        self.batch_size = options.batch_size
        self.device = torch.device(device)
        self.epoch = 0
        self._n = len(images)
        self._labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64, device=self.device)
        self._dtype = getattr(torch, options.dtype)  # LOADER_DTYPES are torch's own dtype names
        self._len = num_batches(self._n, options)

    def __len__(self) -> int:
        return self._len

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
