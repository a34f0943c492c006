"""The Loader interface and `make_loader(...)`, which picks the DALI pipeline or the tensor loader.

Contract (DESIGN.md): iterating yields `(images, labels)` already on the training device: images float
(`dtype`), normalised with mean/std, NCHW shape in channels_last memory format (when asked), at
`image_size`; labels int64. `len(loader)` is batches per epoch; `set_epoch(e)` reshuffles deterministically
from (seed, e). Under torchrun each rank sees a disjoint shard (`rank`, `world_size`).
Training loaders (`train=True`) augment (4-px padded random crop, horizontal flip), shuffle globally
every epoch and drop the ragged last batch; evaluation loaders (`train=False`) neither augment nor shuffle
and yield every image exactly once (a smaller last batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np

from fastcifar.errors import FastCifarError

LOADER_KINDS = ("auto", "dali", "tensor")


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
    image_size: int = 32
    mean: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)  # 0-1 scale
    std: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    channels_last: bool = True
    crop_padding: int = 4
    flip: bool = True
    dtype: str = "float32"  # "float32" | "bfloat16" | "float16"

    def __post_init__(self):
        if self.batch_size < 1:
            raise FastCifarError(f"batch size must be >= 1, got {self.batch_size}")
        if not 0 <= self.rank < self.world_size:
            raise FastCifarError(f"rank {self.rank} is outside world size {self.world_size}")


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


def make_loader(images: np.ndarray, labels: np.ndarray, options: LoaderOptions, *, kind: str = "auto",
                device="cpu") -> Loader:
    """A loader over uint8 HWC `images` (N,32,32,3) and int `labels` on `device`.

    kind: 'tensor' (pure torch, dataset resident on the device), 'dali' (NVIDIA DALI; GPU ops on CUDA,
    CPU pipeline otherwise) or 'auto' (DALI on CUDA when it imports, the tensor loader otherwise - on the
    CPU the tensor loader is as fast and needs no worker threads).
    """
    import torch

    device = torch.device(device)
    if kind not in LOADER_KINDS:
        raise FastCifarError(f"unknown loader '{kind}' (choose from {', '.join(LOADER_KINDS)})")
    if kind == "auto":
        kind = "dali" if device.type == "cuda" and dali_available() else "tensor"
    factories = {"tensor": _tensor_loader, "dali": _dali_loader}
    return factories[kind](images, labels, options, device)


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return False
    return True


def _tensor_loader(images, labels, options, device):
    from fastcifar.data.tensor_loader import TensorLoader

    return TensorLoader(images, labels, options, device)


def _dali_loader(images, labels, options, device):
    if not dali_available():
        raise FastCifarError("--loader dali needs NVIDIA DALI: pip install nvidia-dali-cuda130 "
                             "(or use --loader tensor)")
    from fastcifar.data.dali_loader import DaliLoader

    return DaliLoader(images, labels, options, device)
