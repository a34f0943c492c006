"""Which dataset a data directory holds, and loading it: the one entry point every verb that reads data calls.

Owns `--dataset` (`cifar10`, `cifar100`, `folder`, and `auto`: a folder when DIR holds train/<class>/ or, with no
train/ and no CIFAR files, class folders of images; CIFAR-100 when DIR holds its files and not CIFAR-10's; else
CIFAR-10, which is downloaded only into a directory holding nothing else), `load_dataset`, and `model_split`: a
model's test split read from the dataset its run recorded, for export parity, INT8 calibration, evaluate and bench.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fastcifar.data.cifar import CifarData, CifarSplit, default_data_dir, find_batches_dir
from fastcifar.errors import DataError

DATASETS = ("auto", "cifar10", "cifar100", "folder")
# How messages, `fastcifar data` and the compare report name each kind.
DATASET_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "folder": "an image folder"}


def resolve_dataset(dataset: str, data_dir: Path | str | None) -> str:
    """The kind `auto` means for `data_dir` (others are returned as they are, after a check)."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset '{dataset}' (choose from {', '.join(DATASETS)})")
    if dataset != "auto":
        return dataset
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if holds(root, "folder"):
        return "folder"
    if find_batches_dir(root) is None and holds(root, "cifar100"):
        return "cifar100"
    return "cifar10"


def holds(data_dir: Path | str, kind: str) -> bool:
    """Whether `data_dir` holds a dataset of `kind` (its files, or for CIFAR its official archive)."""
    from fastcifar.data.cifar100 import CIFAR100_ARCHIVE, find_cifar100_dir
    from fastcifar.data.download import ARCHIVE_NAME
    from fastcifar.data.folder import is_image_folder

    root = Path(data_dir).expanduser()
    if kind == "folder":
        return is_image_folder(root)
    if kind == "cifar100":
        return find_cifar100_dir(root) is not None or (root / CIFAR100_ARCHIVE).is_file()
    return find_batches_dir(root) is not None or (root / ARCHIVE_NAME).is_file()


def load_dataset(data_dir: Path | str | None, dataset: str = "auto", *, download: bool = True, progress: bool = True,
                 cache_dir: Path | str | None = None, url: str | None = None, md5: str | None = None) -> CifarData:
    """Both splits of the dataset `data_dir` holds (downloaded when a CIFAR one is missing and `download`)."""
    kind = resolve_dataset(dataset, data_dir)
    extra = {k: v for k, v in (("url", url), ("md5", md5)) if v is not None}
    if kind == "folder":
        from fastcifar.data.folder import load_image_folder

        return load_image_folder(data_dir if data_dir is not None else default_data_dir(), cache_dir=cache_dir,
                                 progress=progress)
    if kind == "cifar100":
        from fastcifar.data.cifar100 import load_cifar100

        data = load_cifar100(data_dir, download=download, progress=progress, **extra)
    else:
        from fastcifar.data.cifar import load_cifar10

        data = load_cifar10(data_dir, download=download, progress=progress, **extra)
    data.info.update(dataset=kind, root=str(data.root), class_names=list(data.class_names), test_source="test split")
    return data


def model_split(split: str, data_dir: Path | str | None, model_meta: dict | None = None, *, recorded=(),
                class_names=None, download: bool = False, no_download: str | None = None) -> tuple[CifarSplit, Path]:
    """(split, root): one split ("train" or "test") of the dataset a model was trained on - export's parity check
    and INT8 calibration, evaluate and bench read it.

    The dataset is the one model.json records (`model_meta["dataset"]`), else what `data_dir` holds (auto), else
    CIFAR-10. It is read from `data_dir`, else from where the run recorded it (`recorded`, model_meta's data_dir),
    else (CIFAR-10) the default data dir. For CIFAR-10 only the split's batches are read (the test batch is 30 MB
    of the 180). `class_names` (the model's): the dataset must have the same, else one message names both.
    """
    from fastcifar.data.cifar import load_class_names, load_split, locate_cifar

    meta = model_meta or {}
    recorded_kind = meta.get("dataset")
    kind = recorded_kind or (resolve_dataset("auto", data_dir) if data_dir else "cifar10")
    if data_dir and recorded_kind and not holds(data_dir, recorded_kind):
        raise DataError(f"the model was trained on {DATASET_TITLES[recorded_kind]}, and --data-dir {data_dir} holds "
                        "none: give the --data-dir of the dataset it was trained on")
    places = [Path(p).expanduser() for p in (list(recorded) or [meta.get("data_dir")]) if p]
    if kind == "cifar10":
        kwargs = {"no_download": no_download} if no_download else {}
        root = locate_cifar(data_dir, places, download=download, **kwargs)
        out, names = load_split(root, split), load_class_names(root)
    else:
        where = data_dir or next((p for p in places if p.exists()), None)
        if where is None:
            raise DataError(f"the model was trained on a {kind} dataset that is not where its run recorded it "
                            f"({', '.join(map(str, places)) or 'nowhere'}): give --data-dir")
        data = load_dataset(where, kind, download=download, progress=False)
        out, root, names = getattr(data, split), data.root, data.class_names
        recorded_files = (meta.get("dataset_info") or {}).get("test_files")
        if kind == "folder" and split == "test" and recorded_files is not None:
            from fastcifar.data.folder import recorded_test_split

            out, note = recorded_test_split(data, recorded_files)  # the run's own held-out images, not a new draw
            if note:
                print(f"note: {note}", file=sys.stderr)
    if class_names is not None and tuple(class_names) != tuple(names):
        raise DataError(f"{root} holds {len(names)} classes ({_few(names)}), and the model was trained on "
                        f"{len(class_names)} ({_few(class_names)}): give the --data-dir of the dataset it was "
                        "trained on")
    return out, root


def _few(names) -> str:
    names = list(names)
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
