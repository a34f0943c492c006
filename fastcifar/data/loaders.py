"""`make_loader(...)`: the one call that builds a loader, the DALI pipeline or the tensor loader
(`loader_contract.py` holds the contract both follow).
"""

from __future__ import annotations

import numpy as np

from fastcifar.data.loader_contract import Loader, LoaderOptions, check_arrays
from fastcifar.errors import FastCifarError

# dali-files: DALI decodes an image folder's files itself (dali_files.py; train/build.py builds it from the file
# lists, not through make_loader).
LOADER_KINDS = ("auto", "dali", "tensor", "dali-files")


def make_loader(images: np.ndarray, labels: np.ndarray, options: LoaderOptions, *, kind: str = "auto",
                device="cpu") -> Loader:
    """A loader over uint8 HWC `images` (N,32,32,3) and int `labels` on `device`.

    kind: 'tensor' (pure torch, dataset resident on the device), 'dali' (NVIDIA DALI; GPU ops on CUDA,
    CPU pipeline otherwise) or 'auto' (the tensor loader, on every device).

    Why 'auto' is the tensor loader on CUDA too: it is the path measured on a GPU, while DALI's GPU pipeline has not
    run on one yet (docs/training.md, "Loaders"); on the CPU it is the faster of the two (bench/README.md, "Loaders").
    Revisit once bench/gpu_check.sh shows DALI's GPU pipeline pixel-equal and at least as fast.
    """
    import torch

    device = torch.device(device)
    if kind not in LOADER_KINDS:
        raise FastCifarError(f"unknown loader '{kind}' (choose from {', '.join(LOADER_KINDS)})")
    if kind == "dali-files":
        raise FastCifarError("--loader dali-files reads image files (fastcifar.data.dali_files.DaliFileLoader), "
                             "not arrays: use it with an image-folder dataset")
    check_arrays(images, labels, options)
    if kind == "auto":
        kind = "tensor"
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
        from fastcifar.extras import DALI_INSTALL

        raise FastCifarError(f"--loader dali needs NVIDIA DALI, which is not installed; {DALI_INSTALL} (or use "
                             "--loader tensor)")
    from fastcifar.data.dali_loader import DaliLoader

    return DaliLoader(images, labels, options, device)
