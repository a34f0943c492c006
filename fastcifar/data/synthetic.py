"""Tiny, learnable CIFAR-10-format datasets for tests (and for trying the CLI without the real data).

Files are written exactly in the official layout (`cifar-10-batches-py/data_batch_1..5`, `test_batch`,
`batches.meta`; dicts with `data` (N,3072) uint8 channel-major rows and `labels`), so everything
downstream reads them through the same code path as the real CIFAR-10.

Learnable: class c is drawn as a coloured shape whose colour and position follow from c, under pixel noise
and a random brightness shift, so a small network reaches high accuracy within a few epochs while chance
stays at 10 %. The class signal survives a 4-pixel padded crop and a horizontal flip.
"""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

from fastcifar.data.cifar import BATCHES_DIR, CLASS_NAMES, META_FILE, TEST_FILES, TRAIN_FILES

# One distinct colour per class (RGB, 0-255) and one of two shape sizes: colour alone already separates them.
_PALETTE = np.array([
    [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [128, 128, 128],
], dtype=np.float32)


def make_images(labels: np.ndarray, rng: np.random.Generator, noise: float = 40.0) -> np.ndarray:
    """Images (N,32,32,3) uint8 for `labels`: a class-coloured square on a dark noisy background."""
    n = len(labels)
    background = rng.normal(60.0, noise, size=(n, 32, 32, 3))
    images = background
    half = np.where(labels % 2 == 0, 8, 11)  # two square sizes
    for i, (label, h) in enumerate(zip(labels, half)):
        cy, cx = rng.integers(12, 20, size=2)
        patch = _PALETTE[label] + rng.normal(0.0, noise, size=(2 * h, 2 * h, 3))
        y0, x0 = max(cy - h, 0), max(cx - h, 0)
        images[i, y0:cy + h, x0:cx + h] = patch[: min(cy + h, 32) - y0, : min(cx + h, 32) - x0]
    images += rng.normal(0.0, 15.0, size=(n, 1, 1, 1))  # per-image brightness shift
    return np.clip(images, 0, 255).astype(np.uint8)


def _batch_dict(images: np.ndarray, labels: np.ndarray, name: str) -> dict:
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # HWC -> channel-major rows
    return {"batch_label": name, "labels": [int(v) for v in labels], "data": np.ascontiguousarray(rows)}


def synthetic_arrays(n_train: int = 500, n_test: int = 100, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_images, train_labels, test_images, test_labels) exactly as `write_synthetic_cifar` writes them.

    Images are (N,32,32,3) uint8 HWC, labels int64; labels cycle through all 10 classes (shuffled).
    """
    rng = np.random.default_rng(seed)
    train_labels = rng.permutation(np.arange(n_train) % 10)
    train_images = make_images(train_labels, rng)
    test_labels = rng.permutation(np.arange(n_test) % 10)
    test_images = make_images(test_labels, rng)
    return train_images, train_labels.astype(np.int64), test_images, test_labels.astype(np.int64)


def write_synthetic_cifar(root: Path | str, *, n_train: int = 500, n_test: int = 100, seed: int = 0,
                          protocol: int = 2) -> Path:
    """Write a synthetic CIFAR-10 under `root/cifar-10-batches-py` and return that directory.

    `n_train` images are spread over the five training batches (batch sizes may differ), `n_test` go to
    `test_batch`; labels cycle through all 10 classes so every class is present.
    """
    train_images, train_labels, test_images, test_labels = synthetic_arrays(n_train, n_test, seed)
    out = Path(root) / BATCHES_DIR
    out.mkdir(parents=True, exist_ok=True)
    for i, (imgs, labs) in enumerate(zip(np.array_split(train_images, 5), np.array_split(train_labels, 5))):
        _write(out / TRAIN_FILES[i], _batch_dict(imgs, labs, f"training batch {i + 1} of 5"), protocol)
    _write(out / TEST_FILES[0], _batch_dict(test_images, test_labels, "testing batch 1 of 1"), protocol)
    _write(out / META_FILE, {"label_names": list(CLASS_NAMES), "num_cases_per_batch": max(n_train // 5, 1),
                             "num_vis": 3072}, protocol)
    return out


def _write(path: Path, obj: dict, protocol: int) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def write_synthetic_archive(path: Path | str, **kwargs) -> Path:
    """Write a synthetic dataset as a `cifar-10-python.tar.gz`-style archive (for download/extract tests)."""
    import tempfile

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        batches = write_synthetic_cifar(tmp, **kwargs)
        with tarfile.open(path, "w:gz") as tar:
            tar.add(batches, arcname=BATCHES_DIR)
    return path


def write_synthetic_cifar100_archive(path: Path | str, *, n_train: int = 400, n_test: int = 200, seed: int = 0,
                                     protocol: int = 2) -> Path:
    """A `cifar-100-python.tar.gz` in the official layout (`cifar-100-python/{train,test,meta}`: dicts with
    `data` (N,3072) uint8 rows, `fine_labels`, `coarse_labels`, `filenames`; meta with `fine_label_names` and
    `coarse_label_names`). Learnable at the coarse level: fine class c is drawn like CIFAR-10 class c % 10 here,
    so a model can tell the ten colour groups apart (above the 1 % chance of 100 classes), not the classes
    within one."""
    import tempfile

    rng = np.random.default_rng(seed)
    fine_names = [f"class_{i:02d}" for i in range(100)]
    coarse_names = [f"superclass_{i:02d}" for i in range(20)]

    def split(n: int, name: str) -> dict:
        labels = rng.permutation(np.arange(n) % 100)
        rows = make_images(labels % 10, rng).transpose(0, 3, 1, 2).reshape(n, 3072)
        return {"filenames": [f"{name}_{i}.png".encode() for i in range(n)], "batch_label": name.encode(),
                "fine_labels": [int(v) for v in labels], "coarse_labels": [int(v) // 5 for v in labels],
                "data": np.ascontiguousarray(rows)}

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(path, "w:gz") as tar:
        for name, obj in (("train", split(n_train, "training")), ("test", split(n_test, "testing")),
                          ("meta", {"fine_label_names": fine_names, "coarse_label_names": coarse_names})):
            file = Path(tmp) / name
            file.write_bytes(pickle.dumps(obj, protocol=protocol))
            tar.add(file, arcname=f"cifar-100-python/{name}")
    return path


def write_image_folder(root: Path | str, images: np.ndarray, labels: np.ndarray, names, *, size: int = 40,
                       quality: int = 92, grey_every: int = 0, split: str = "train") -> Path:
    """uint8 images as an image-folder dataset (`root/<split>/<names[label]>/<index>.jpg`, fastcifar/data/folder.py's
    layout): each upscaled to `size` px (bicubic) and JPEG-encoded at `quality`; with `grey_every` N, every Nth
    image is stored greyscale (the folder loader must convert it). For tests and bench/folder_decode.py."""
    from PIL import Image

    root = Path(root)
    for i, (pixels, label) in enumerate(zip(images, labels)):
        folder = root / split / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC)
        if grey_every and i % grey_every == 0:
            image = image.convert("L")
        image.save(folder / f"{i:05d}.jpg", quality=quality)
    return root


def malicious_pickle(command_marker: Path) -> bytes:
    """A pickle that runs `touch command_marker` when loaded by a plain `pickle.load` (for tests)."""

    class _Exploit:
        def __reduce__(self):
            return (os.system, (f"touch '{command_marker}'",))

    return pickle.dumps({"data": _Exploit(), "labels": [0]}, protocol=2)


__all__ = ["make_images", "synthetic_arrays", "write_synthetic_cifar", "write_synthetic_archive",
           "write_synthetic_cifar100_archive", "write_image_folder", "malicious_pickle"]
