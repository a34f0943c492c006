"""Find, download, verify and safely load CIFAR-10 into plain uint8 arrays.

Owns everything between "a directory path" and `CifarData` (N,32,32,3 uint8 images + int64 labels +
class names). Nothing here knows about torch or devices.

Layouts accepted in a data directory (first match wins):
  <dir>/cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta   (the extracted official archive)
  <dir>/data_batch_1..5, test_batch, batches.meta                         (the batch files themselves)
  <dir>/cifar-10-python.tar.gz                                            (the official archive, verified + extracted)

Security: the batch files are pickles. They go through `RestrictedUnpickler`, which admits only what a
CIFAR batch needs (numpy arrays, dtypes and plain containers/scalars); any other global, and so any code a
malicious pickle tries to run, is refused before it is touched.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fastcifar.errors import DataError

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
NUM_CLASSES = 10
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def default_data_dir() -> Path:
    """`$FASTCIFAR_DATA`, else `~/.cache/fastcifar`."""
    env = os.environ.get("FASTCIFAR_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fastcifar"


@dataclass(frozen=True)
class CifarSplit:
    images: np.ndarray  # (N, 32, 32, 3) uint8, HWC
    labels: np.ndarray  # (N,) int64 in 0..9

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class CifarData:
    train: CifarSplit
    test: CifarSplit
    class_names: tuple[str, ...]
    root: Path  # the directory holding the batch files


# ---------------------------------------------------------------------------------------------- unpickling

# Exactly the globals a CIFAR batch (official Python 2 pickles, or protocol 2-5 rewrites) refers to.
# `_codecs.encode` is how protocol 2 stores bytes written by Python 3; it only turns a str into bytes.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "tuple"),
    ("builtins", "bytearray"),
    ("collections", "OrderedDict"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals (numpy arrays and plain containers)."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(f"refused to load global '{module}.{name}'")


def restricted_load(data: bytes) -> object:
    """Unpickle `data` admitting only numpy arrays and plain containers/scalars."""
    # latin1 maps Python 2 `str` byte-for-byte onto Python 3 str, which is what numpy's array state needs.
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def _read_pickle(path: Path) -> dict:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        obj = restricted_load(raw)
    except UnsafePickleError as exc:
        raise DataError(f"{path} is not a safe CIFAR-10 batch: {exc}. The file was not loaded; "
                        "replace it with the official one.") from None
    except Exception as exc:  # truncated / garbage files raise many different types
        raise DataError(f"{path} is corrupt or truncated ({type(exc).__name__}: {exc}). "
                        "Delete it and download CIFAR-10 again.") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR-10 batch (expected a dict, found {type(obj).__name__})")
    # Official files read with encoding="bytes" have bytes keys; normalise to str.
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def load_batch(path: Path) -> CifarSplit:
    """Load and validate one batch file into (N,32,32,3) uint8 images and int64 labels."""
    batch = _read_pickle(path)
    data, labels = batch.get("data"), batch.get("labels")
    if data is None or labels is None:
        raise DataError(f"{path} is not a CIFAR-10 batch (missing 'data' or 'labels')")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), found {dtype} {shape}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: 'labels' is not a list of integers") from None
    if labels.ndim != 1 or len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {labels.size} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{path}: labels must lie in 0..{NUM_CLASSES - 1}, found {labels.min()}..{labels.max()}")
    # Rows are channel-major (1024 R, 1024 G, 1024 B); convert to HWC once, contiguous.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return CifarSplit(images=images, labels=labels)


def load_class_names(root: Path) -> tuple[str, ...]:
    path = root / META_FILE
    if not path.exists():
        return CLASS_NAMES
    names = _read_pickle(path).get("label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise DataError(f"{path}: 'label_names' must be a list of {NUM_CLASSES} names")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _concat(splits: list[CifarSplit]) -> CifarSplit:
    return CifarSplit(images=np.concatenate([s.images for s in splits]),
                      labels=np.concatenate([s.labels for s in splits]))


def load_split(root: Path, split: str) -> CifarSplit:
    """Load `train` (data_batch_1..5) or `test` (test_batch) from a directory of batch files."""
    files = {"train": TRAIN_FILES, "test": TEST_FILES}[split]
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise DataError(f"CIFAR-10 in {root} is incomplete: missing {', '.join(missing)}. "
                        "Delete the directory and download again.")
    return _concat([load_batch(root / f) for f in files])


# ---------------------------------------------------------------------------------------------- locating


def find_batches_dir(data_dir: Path) -> Path | None:
    """The directory holding the batch files, if `data_dir` has one of the extracted layouts."""
    for candidate in (data_dir / BATCHES_DIR, data_dir):
        if (candidate / TRAIN_FILES[0]).exists() or (candidate / TEST_FILES[0]).exists():
            return candidate
    return None


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_cifar(data_dir: Path | str, *, download: bool = True, url: str = CIFAR_URL, md5: str = CIFAR_MD5,
                 progress: bool = True) -> Path:
    """Return the batches directory under `data_dir`, extracting or downloading the archive if needed."""
    data_dir = Path(data_dir).expanduser()
    found = find_batches_dir(data_dir)
    if found is not None:
        return found
    archive = data_dir / ARCHIVE_NAME
    if not archive.exists():
        if not download:
            raise DataError(f"CIFAR-10 not found in {data_dir} and downloading is off (--no-download). "
                            f"Point --data-dir (or $FASTCIFAR_DATA) at a directory holding {BATCHES_DIR}/ "
                            f"or {ARCHIVE_NAME}.")
        download_archive(url, archive, md5=md5, progress=progress)
    else:
        actual = md5sum(archive)
        if actual != md5:
            raise DataError(f"{archive} has md5 {actual}, expected {md5}: the archive is corrupt or not the "
                            "official one. Delete it and download again.")
    extract_archive(archive, data_dir)
    found = find_batches_dir(data_dir)
    if found is None:
        raise DataError(f"{archive} did not contain {BATCHES_DIR}/")
    return found


def load_cifar10(data_dir: Path | str | None = None, *, download: bool = True, url: str = CIFAR_URL,
                 md5: str = CIFAR_MD5, progress: bool = True) -> CifarData:
    """Find (or download) CIFAR-10 and load both splits, validated."""
    root = ensure_cifar(Path(data_dir) if data_dir is not None else default_data_dir(), download=download,
                        url=url, md5=md5, progress=progress)
    return CifarData(train=load_split(root, "train"), test=load_split(root, "test"),
                     class_names=load_class_names(root), root=root)


# ---------------------------------------------------------------------------------------------- download


def _progress_bar(enabled: bool):
    from rich.progress import (BarColumn, DownloadColumn, Progress, TimeRemainingColumn,
                               TransferSpeedColumn)

    return Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), disable=not enabled, transient=True)


def download_archive(url: str, dest: Path, *, md5: str, progress: bool = True, timeout: float = 30.0,
                     opener: Callable = urllib.request.urlopen) -> Path:
    """Download `url` to `dest` via `dest.part`, resuming a previous partial download when the server allows.

    The file is renamed to `dest` only after its md5 matches, so `dest` is either absent or verified.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "fastcifar"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = opener(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part file is already complete (or longer than the file)
            response = None
        else:
            raise _offline_error(url, dest, f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _offline_error(url, dest, str(reason)) from None
    if response is not None:
        with response:
            resumed = have and getattr(response, "status", 200) == 206
            mode = "ab" if resumed else "wb"  # a 200 to a Range request means: start over
            start = have if resumed else 0
            length = response.headers.get("Content-Length")
            total = start + int(length) if length is not None else None
            try:
                with open(part, mode) as fh, _progress_bar(progress) as bar:
                    task = bar.add_task(f"downloading {dest.name}", total=total, completed=start)
                    for block in iter(lambda: response.read(1 << 16), b""):
                        fh.write(block)
                        bar.advance(task, len(block))
            except (OSError, urllib.error.URLError) as exc:
                raise DataError(f"download of {url} interrupted ({exc}); run the command again to resume "
                                f"from {part}") from None
    actual = md5sum(part)
    if actual != md5:
        part.unlink()
        raise DataError(f"downloaded {url} has md5 {actual}, expected {md5}; the partial file was deleted. "
                        "Run the command again to retry.")
    os.replace(part, dest)
    return dest


def _offline_error(url: str, dest: Path, reason: str) -> DataError:
    return DataError(f"cannot download CIFAR-10 from {url} ({reason}). If you are offline, copy "
                     f"{ARCHIVE_NAME} into {dest.parent} or point --data-dir (or $FASTCIFAR_DATA) at a "
                     f"directory holding {BATCHES_DIR}/.")


def extract_archive(archive: Path, data_dir: Path) -> Path:
    """Extract the official archive's batches safely into `data_dir/cifar-10-batches-py` (atomically).

    Only regular files directly inside `cifar-10-batches-py/` are extracted: absolute paths, `..`, links and
    devices are refused, so a hostile archive cannot write outside the target.
    """
    target = data_dir / BATCHES_DIR
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=data_dir))
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if member.isdir() and parts == (BATCHES_DIR,):
                    continue
                unsafe = (member.name.startswith(("/", "\\")) or ".." in parts or len(parts) != 2
                          or parts[0] != BATCHES_DIR or not member.isfile())
                if unsafe:
                    raise DataError(f"{archive} contains an unexpected entry '{member.name}'; refusing to "
                                    "extract it. Delete the archive and download the official one.")
                with tar.extractfile(member) as source, open(tmp / parts[1], "wb") as out:
                    shutil.copyfileobj(source, out)
        if not (tmp / TRAIN_FILES[0]).exists():
            raise DataError(f"{archive} has no {BATCHES_DIR}/{TRAIN_FILES[0]}")
        os.replace(tmp, target)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{archive} is not a readable tar.gz archive ({exc}). Delete it and download "
                        "again.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------- statistics


def split_stats(split: CifarSplit) -> dict:
    """Count, per-class counts and per-channel mean/std on the 0-255 scale."""
    # float64 accumulation over (N*32*32) pixels per channel; chunked to keep memory small for 50k images.
    n = len(split)
    total = np.zeros(3)
    total_sq = np.zeros(3)
    for start in range(0, n, 5000):
        chunk = split.images[start:start + 5000].reshape(-1, 3).astype(np.float64)
        total += chunk.sum(0)
        total_sq += (chunk ** 2).sum(0)
    pixels = max(n * 32 * 32, 1)
    mean = total / pixels
    std = np.sqrt(np.maximum(total_sq / pixels - mean ** 2, 0.0))
    return {
        "count": int(n),
        "per_class": np.bincount(split.labels, minlength=NUM_CLASSES).astype(int).tolist(),
        "mean": [round(float(m), 4) for m in mean],
        "std": [round(float(s), 4) for s in std],
    }
