"""CIFAR-100: find, download (the official python archive, md5-verified), safely unpickle, load.

Owns `load_cifar100(data_dir)` -> `CifarData` with the 100 fine labels and their names from the archive's `meta`,
through CIFAR-10's machinery (data/cifar.py, download.py). A data directory may hold `cifar-100-python/`, its
files themselves, or the official archive (first match wins).
"""

from __future__ import annotations

from pathlib import Path

from fastcifar.data.cifar import CifarData, CifarSplit, _read_pickle, default_data_dir, load_batch
from fastcifar.errors import DataError

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
# download.py owns the names (its guard must know them without importing this module)
from fastcifar.data.download import CIFAR100_ARCHIVE, CIFAR100_DIR, CIFAR100_FILES  # noqa: E402
NUM_FINE = 100


def find_cifar100_dir(data_dir: Path) -> Path | None:
    for candidate in (data_dir / CIFAR100_DIR, data_dir):
        if (candidate / "meta").is_file() and ((candidate / "train").is_file() or (candidate / "test").is_file()):
            return candidate
    return None


def ensure_cifar100(data_dir: Path | str, *, download: bool = True, url: str = CIFAR100_URL, md5: str = CIFAR100_MD5,
                    progress: bool = True) -> Path:
    """The directory holding CIFAR-100's files under `data_dir`, extracting or downloading the archive if needed."""
    from fastcifar.data.download import fetch_official

    return fetch_official(Path(data_dir).expanduser(), CIFAR100_ARCHIVE, find=find_cifar100_dir, url=url, md5=md5,
                          top=CIFAR100_DIR, required="meta", name="CIFAR-100", download=download, progress=progress)


def load_fine_names(root: Path) -> tuple[str, ...]:
    meta = _read_pickle(root / "meta", "CIFAR-100")
    names = meta.get("fine_label_names")
    if not isinstance(names, list) or len(names) != NUM_FINE:
        raise DataError(f"{root / 'meta'}: 'fine_label_names' must be a list of {NUM_FINE} names")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def load_cifar100_split(root: Path, split: str) -> CifarSplit:
    path = root / split
    if not path.is_file():
        raise DataError(f"CIFAR-100 in {root} is incomplete: missing {split}. Delete the directory and download "
                        "again.")
    return load_batch(path, label_key="fine_labels", num_classes=NUM_FINE, dataset="CIFAR-100")


def load_cifar100(data_dir: Path | str | None = None, *, download: bool = True, url: str = CIFAR100_URL,
                  md5: str = CIFAR100_MD5, progress: bool = True) -> CifarData:
    root = ensure_cifar100(Path(data_dir) if data_dir is not None else default_data_dir(), download=download,
                           url=url, md5=md5, progress=progress)
    return CifarData(train=load_cifar100_split(root, "train"), test=load_cifar100_split(root, "test"),
                     class_names=load_fine_names(root), root=root)
