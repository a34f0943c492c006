"""Find, download, verify and safely load CIFAR-10 into plain uint8 arrays (`CifarData`; no torch, no devices).

Owns everything between "a directory path" and `CifarData`: the layouts a data directory may hold (the extracted
`cifar-10-batches-py/`, the batch files themselves, or the official archive; first match wins) and the
`RestrictedUnpickler` the batch files (pickles) go through, which refuses any global a CIFAR batch does not need
before it is touched (docs/data.md, "Download safety").
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastcifar.data.download import (ARCHIVE_NAME, BATCHES_DIR, CIFAR_MD5, CIFAR_URL, META_FILE, NO_DOWNLOAD,
                                     TEST_FILES, TRAIN_FILES)
from fastcifar.errors import DataError

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
    """Both splits of a dataset: CIFAR-10 here, CIFAR-100 and image folders in the same form (datasets.py)."""

    train: CifarSplit
    test: CifarSplit
    class_names: tuple[str, ...]
    root: Path  # the directory holding the batch files (an image folder: the folder)
    # what the run records about the data (datasets.load_dataset: kind, root, test split's source, skipped files)
    info: dict = field(default_factory=dict)
    # an image folder's accepted files per split, in the arrays' order (absolute paths; `--loader dali-files`
    # decodes them itself); None for CIFAR
    files: dict | None = None


# ---------------------------------------------------------------------------------------------- unpickling

# Exactly the globals a CIFAR batch (official Python 2 pickles, or protocol 2-5 rewrites) refers to.
# `_codecs.encode` is how protocol 2 stores bytes written by Python 3 (`encode(str, "latin1")`); it is admitted
# only with the latin-1 codec, so a pickle cannot make the codec registry import anything.
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
    ("builtins", "bytes"),  # protocol 2 stores an empty bytes object as a call to bytes()
    ("__builtin__", "bytes"),  # ... spelled the Python 2 way (fix_imports) by Python 3's pickler
    ("__builtin__", "bytearray"),
    ("collections", "OrderedDict"),
}
_LATIN1_NAMES = {"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1"}


def _latin1_encode(obj, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    if not isinstance(obj, str) or str(encoding).lower() not in _LATIN1_NAMES:
        raise UnsafePickleError(f"refused _codecs.encode with encoding {encoding!r}")
    return obj.encode("latin1", errors)


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals (numpy arrays and plain containers)."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(f"refused to load global '{module}.{name}'")


def restricted_load(data: bytes) -> object:
    """Unpickle `data` admitting only numpy arrays and plain containers/scalars."""
    # latin1 maps Python 2 `str` byte-for-byte onto Python 3 str, which is what numpy's array state needs.
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def _read_pickle(path: Path, dataset: str = "CIFAR-10") -> dict:
    """A batch/meta pickle of `dataset` (named in the messages: cifar100.py reads CIFAR-100's with it)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        obj = restricted_load(raw)
    except UnsafePickleError as exc:
        raise DataError(f"{path} is not a safe {dataset} batch: {exc}. The file was not loaded; "
                        "replace it with the official one.") from None
    except Exception as exc:  # truncated / garbage files raise many different types
        raise DataError(f"{path} is corrupt or truncated ({type(exc).__name__}: {exc}). "
                        f"Delete it and download {dataset} again.") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a {dataset} batch (expected a dict, found {type(obj).__name__})")
    # Official files read with encoding="bytes" have bytes keys; normalise to str.
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def load_batch(path: Path, *, label_key: str = "labels", num_classes: int = NUM_CLASSES,
               dataset: str = "CIFAR-10") -> CifarSplit:
    """Load and validate one batch file into (N,32,32,3) uint8 images and int64 labels. CIFAR-100's files have the
    same layout with their labels under `fine_labels` (fastcifar/data/cifar100.py)."""
    batch = _read_pickle(path, dataset)
    data, labels = batch.get("data"), batch.get(label_key)
    if data is None or labels is None:
        raise DataError(f"{path} is not a {dataset} batch (missing 'data' or '{label_key}')")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), found {dtype} {shape}")
    try:
        labels = np.asarray(labels)
    except (TypeError, ValueError):  # ragged nested lists
        labels = None
    if labels is None or labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise DataError(f"{path}: '{label_key}' must be a flat list of integers")
    labels = labels.astype(np.int64)
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}")
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


def locate_cifar(data_dir: Path | str | None, recorded=(), *, download: bool = False, required: bool = True,
                 progress: bool = False, no_download: str | None = None) -> Path | None:
    """The batches directory a check (export parity, INT8 calibration, bench, the demo gallery) reads from.

    An explicit `data_dir` must hold CIFAR-10 (or is downloaded into with `download`). Otherwise the places a run
    recorded (`recorded`: model.json's data_dir) and then the default data dir are looked in, in that order;
    when none holds it, `required` raises ensure_cifar's message for the default (or downloads there with
    `download`), and not `required` returns None. `no_download`: why nothing is downloaded, for a command without a
    --download option (the message otherwise names --no-download).
    """
    kwargs = dict(download=download, progress=progress, **({"no_download": no_download} if no_download else {}))
    if data_dir:
        return ensure_cifar(data_dir, **kwargs)
    candidates = [Path(d).expanduser() for d in recorded if d] + [default_data_dir()]
    found = next((root for root in map(find_batches_dir, candidates) if root is not None), None)
    if found is not None or not required:
        return found
    return ensure_cifar(default_data_dir(), **kwargs)


def ensure_cifar(data_dir: Path | str, *, download: bool = True, url: str = CIFAR_URL, md5: str = CIFAR_MD5,
                 progress: bool = True, no_download: str = NO_DOWNLOAD) -> Path:
    """Return the batches directory under `data_dir`, extracting or downloading the archive if needed."""
    from fastcifar.data.download import fetch_official

    return fetch_official(Path(data_dir).expanduser(), ARCHIVE_NAME, find=find_batches_dir, url=url, md5=md5,
                          top=BATCHES_DIR, required=TRAIN_FILES[0], name="CIFAR-10", download=download,
                          progress=progress, no_download=no_download)


def load_cifar10(data_dir: Path | str | None = None, *, download: bool = True, url: str = CIFAR_URL,
                 md5: str = CIFAR_MD5, progress: bool = True) -> CifarData:
    """Find (or download) CIFAR-10 and load both splits, validated."""
    root = ensure_cifar(Path(data_dir) if data_dir is not None else default_data_dir(), download=download,
                        url=url, md5=md5, progress=progress)
    return CifarData(train=load_split(root, "train"), test=load_split(root, "test"),
                     class_names=load_class_names(root), root=root)


# ---------------------------------------------------------------------------------------------- statistics


def split_stats(split: CifarSplit, num_classes: int = NUM_CLASSES) -> dict:
    """Count, per-class counts and per-channel mean/std on the 0-255 scale."""
    # Sums and sums of squares of uint8 values stay below 2**53, so float64 accumulates them exactly (in any
    # order); BLAS does the squares (x.T @ x) about 2x faster than elementwise numpy on 50k images.
    n = len(split)
    total = np.zeros(3)
    total_sq = np.zeros(3)
    for start in range(0, n, 1000):
        chunk = split.images[start:start + 1000].reshape(-1, 3).astype(np.float64)
        total += chunk.sum(0)
        total_sq += np.diag(chunk.T @ chunk)
    pixels = n * split.images.shape[1] * split.images.shape[2] or 1
    mean = total / pixels
    std = np.sqrt(np.maximum(total_sq / pixels - mean ** 2, 0.0))
    return {
        "count": int(n),
        "per_class": np.bincount(split.labels, minlength=num_classes).astype(int).tolist(),
        "mean": [round(float(m), 4) for m in mean],
        "std": [round(float(s), 4) for s in std],
    }
