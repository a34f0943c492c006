"""A folder of images per class as a dataset, decoded once into a uint8 cache the loaders read like CIFAR. Two
layouts: `train/CLASS/*` (optionally `val/`, `test/`), or the class folders themselves, `CLASS/*` (torchvision's
ImageFolder layout: no train/).

Owns scanning the folder (which layout, class names, the fixed training order, the test split: test/, else val/,
else a stratified share held out of the training images, drawn once and recorded by file name in the cache
directory so that later runs reuse it), deciding once, for every loader, what each bad file is, decoding in parallel
through data/images.py's `load_image`, and the decode cache. Entry points: `load_image_folder`, `scan_folder`,
`is_image_folder`. The rules a user sees (layouts, test split, bad files, cache location and key): docs/data.md,
"Image folders".
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fastcifar.data.cifar import CifarData, CifarSplit
from fastcifar.data.download import default_cache_dir
from fastcifar.errors import DataError, FastCifarError

SPLITS = ("train", "val", "test")
HELD_OUT_FRACTION = 0.2  # of each class, when the folder has neither test/ nor val/
HELD_OUT_SEED = 0  # fixed: every run on the folder shares one test split
SPLIT_RECORD_VERSION = 1
DEFAULT_STORAGE_SIZE = 32
CACHE_VERSION = 3  # bump when the decoding changes: old caches are then decoded again


def is_image_folder(data_dir: Path | str) -> bool:
    """True when `data_dir` holds either layout this module reads: train/ with at least one sub-folder, or (no
    train/) class folders of images (`is_class_tree`)."""
    root = Path(data_dir).expanduser()
    train = root / "train"
    try:
        return (train.is_dir() and any(p.is_dir() for p in train.iterdir())) or is_class_tree(root)
    except OSError:
        return False


def holds_cifar_files(root: Path) -> bool:
    """Whether `root` holds CIFAR-10 or CIFAR-100 (extracted, the batch files, or an official archive)."""
    from fastcifar.data.cifar import find_batches_dir
    from fastcifar.data.cifar100 import CIFAR100_ARCHIVE, find_cifar100_dir
    from fastcifar.data.download import ARCHIVE_NAME

    return (find_batches_dir(root) is not None or find_cifar100_dir(root) is not None
            or (root / ARCHIVE_NAME).is_file() or (root / CIFAR100_ARCHIVE).is_file())


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def is_class_tree(data_dir: Path | str) -> bool:
    """True when `data_dir` is a folder of class folders (`DIR/<class>/<images>`, ImageFolder's layout): no train/,
    val/ or test/ folder, no CIFAR files, and at least two sub-folders holding an image (in sub-folders too).

    Two, not one: a single folder of images (or `DIR/training/<class>/`) is a mistake to report, not a
    one-class dataset."""
    root = Path(data_dir).expanduser()
    try:
        if not root.is_dir() or any((root / s).is_dir() for s in SPLITS) or holds_cifar_files(root):
            return False
        suffixes = _image_suffixes()
        with_images = 0
        for folder in _class_dirs(root):
            # stops at the first image: a large photo folder is not walked just to detect its layout
            if any(p.suffix.lower() in suffixes and not p.name.startswith(".") for p in folder.rglob("*")):
                with_images += 1
                if with_images == 2:
                    return True
        return False
    except OSError:
        return False


def split_record_path(cache_root: Path, root: Path) -> Path:
    """Where the held-out split of the folder at `root` (resolved) is recorded: beside the decode caches, never in
    the folder; keyed by the folder's path, so the same folder keeps its split whatever its files become."""
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    return cache_root / "splits" / f"{root.name}-{digest}.json"


@dataclass
class FolderScan:
    root: Path
    class_names: tuple[str, ...]
    files: dict  # split -> [(relative path str, class index)]
    skipped: dict  # reason -> [relative paths]
    test_source: str  # "test/", "val/", "held out of train/" or "held out of the class folders"
    notes: list = field(default_factory=list)
    train_dir: Path | None = None  # root/train, or root itself for a folder of class folders
    # the held-out split to record ({relative path: "train" | "test"}) when it is new or has new files, else None
    split_update: dict | None = None


def _image_suffixes() -> frozenset[str]:
    from fastcifar.data.images import image_extensions

    return image_extensions()


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except (ValueError, OSError):
        return False


def scan_folder(data_dir: Path | str, split_record: Path | None = None) -> FolderScan:
    """The folder's classes and files per split (nothing is decoded or written). `split_record`: the JSON file a
    held-out split is recorded in (`split_record_path`); its files keep their side and only new files are assigned
    (the update to write is `FolderScan.split_update`). None: the seeded split of the files as they are now."""
    root = Path(data_dir).expanduser().resolve()
    if (root / "train").is_dir():
        train_dir, held_out_source = root / "train", "held out of train/"
    elif is_class_tree(root):
        train_dir, held_out_source = root, "held out of the class folders"
    else:
        raise DataError(f"{root} has no train/ folder and no class folders of images: an image dataset is "
                        "DIR/<class>/<images>, or DIR/train/<class>/<images> (optionally DIR/val/ and DIR/test/ "
                        "alike)")
    suffixes = _image_suffixes()
    skipped: dict[str, list[str]] = {}
    classes = [p.name for p in _class_dirs(train_dir)]
    if not classes:
        raise DataError(f"{train_dir} has no class folders: put each class's images in train/<class>/")
    index = {name: i for i, name in enumerate(classes)}
    files: dict[str, list[tuple[str, int]]] = {}
    present = ["train"] + [s for s in SPLITS[1:] if train_dir != root and (root / s).is_dir()]
    notes = []
    if "test" in present and "val" in present:
        notes.append("val/ is not read: test/ is the test split, and the validation images are held out of train/ "
                     "(--val-fraction)")
        present.remove("val")
    for split in present:
        split_dir = train_dir if split == "train" else root / split
        split_classes = [p.name for p in _class_dirs(split_dir)]
        unknown = [c for c in split_classes if c not in index]
        if unknown:
            raise DataError(f"{split_dir / unknown[0]} is a class that train/ does not have: every {split}/ class "
                            "must also be a train/ class")
        rows = []
        for name in split_classes if split != "train" else classes:
            class_dir = split_dir / name
            found = 0
            for path in sorted(class_dir.rglob("*")):
                rel = str(path.relative_to(root))
                if path.is_symlink() and not _inside(path, root):
                    skipped.setdefault("links leaving the folder", []).append(rel)
                    continue
                if not path.is_file():
                    continue
                if path.name.startswith(".") or path.suffix.lower() not in suffixes:
                    skipped.setdefault("not images", []).append(rel)
                    continue
                rows.append((rel, index[name]))
                found += 1
            if found == 0 and split == "train":
                raise DataError(f"{class_dir} holds no images: every class needs training images (remove the "
                                "folder, or add images)")
        files[split] = rows
    split_update = None
    if "test" in files:
        test_source = "test/"
    elif "val" in files:
        test_source = "val/"
        files["test"] = files.pop("val")
    else:
        test_source = held_out_source
        recorded = _read_split_record(split_record) if split_record is not None else {}
        files["train"], files["test"], singles, new = _split_keeping(files["train"], len(classes), recorded)
        if singles:
            notes.append(f"{len(singles)} class(es) with one image keep it for training, none held out: "
                         + ", ".join(classes[c] for c in singles[:5]))
        stranded = sorted(set(range(len(classes))) - {label for _, label in files["train"]})
        if stranded:
            raise DataError(f"every image left in {train_dir / classes[stranded[0]]} is in the recorded test split "
                            f"({split_record}), so the class has no training image: add training images, or delete "
                            "that file to draw the split again")
        if recorded and new:
            n_test = sum(1 for rel in new if rel in {r for r, _ in files["test"]})
            notes.append(f"{len(new)} image(s) new since the split was recorded: {n_test} joined the test split, "
                         f"{len(new) - n_test} training; recorded images keep their side")
        current = {rel: "test" for rel, _ in files["test"]} | {rel: "train" for rel, _ in files["train"]}
        if split_record is not None and any(recorded.get(rel) != side for rel, side in current.items()):
            split_update = recorded | current  # names of removed files stay: put back, a file returns to its side
    # The training files in a fixed random order, not sorted by class: --train-limit and compare's fractions take
    # the first N training images, which must be a sample of every class (CIFAR's batches are shuffled too).
    order = np.random.default_rng(HELD_OUT_SEED + 1).permutation(len(files["train"]))
    files["train"] = [files["train"][i] for i in order]
    return FolderScan(root=root, class_names=tuple(classes), files=files, skipped=skipped, test_source=test_source,
                      notes=notes, train_dir=train_dir, split_update=split_update)


def _held_out(rows: list[tuple[str, int]], n_classes: int):
    """A stratified, seeded split of the training images: HELD_OUT_FRACTION of each class (at least one image of a
    class that has two or more). Returns (train rows, test rows, classes that had one image)."""
    rng = np.random.default_rng(HELD_OUT_SEED)
    by_class: dict[int, list] = {}
    for row in rows:
        by_class.setdefault(row[1], []).append(row)
    train, test, singles = [], [], []
    for label in range(n_classes):
        members = by_class.get(label, [])
        if len(members) < 2:
            singles.append(label)
            train += members
            continue
        order = rng.permutation(len(members))
        n_test = _n_held_out(len(members))
        test += [members[i] for i in sorted(order[:n_test])]
        train += [members[i] for i in sorted(order[n_test:])]
    return sorted(train), sorted(test), singles


def _n_held_out(n: int) -> int:
    return 0 if n < 2 else max(1, int(round(n * HELD_OUT_FRACTION)))


def _split_keeping(rows: list[tuple[str, int]], n_classes: int, recorded: dict):
    """The held-out split with every file in `recorded` ({relative path: "train" | "test"}) kept on its side:
    (train rows, test rows, classes with one image and none held out, relative paths of the files assigned now).

    Nothing recorded among `rows`: the seeded `_held_out` split (what the folder gave before splits were recorded).
    Otherwise each class's new files join the test split until it holds its share of the class again, the rest
    train, in an order fixed by their names (a hash, so it does not depend on which other files are new), so a
    file added later never moves a recorded one across the split."""
    if not any(rel in recorded for rel, _ in rows):
        train, test, singles = _held_out(rows, n_classes)
        return train, test, singles, [rel for rel, _ in rows]
    by_class: dict[int, list] = {}
    for row in rows:
        by_class.setdefault(row[1], []).append(row)
    train, test, singles, new = [], [], [], []
    for label in range(n_classes):
        members = by_class.get(label, [])
        fresh = sorted((row for row in members if row[0] not in recorded),
                       key=lambda row: hashlib.sha256(f"{HELD_OUT_SEED}\0{row[0]}".encode()).hexdigest())
        kept_test = [row for row in members if recorded.get(row[0]) == "test"]
        test += kept_test
        train += [row for row in members if recorded.get(row[0]) == "train"]
        room = _n_held_out(len(members)) - len(kept_test)
        test += fresh[:max(room, 0)]
        train += fresh[max(room, 0):]
        new += [rel for rel, _ in fresh]
        if len(members) < 2 and not kept_test:
            singles.append(label)
    return sorted(train), sorted(test), singles, new


def _read_split_record(path: Path) -> dict:
    """{relative path: "train" | "test"} from a split record; {} when there is none (or it is unreadable: the
    split is then drawn again, as for a new folder, and recorded anew)."""
    try:
        saved = json.loads(path.read_text())
        if saved.get("version") != SPLIT_RECORD_VERSION:
            return {}
        return {str(rel): side for side in ("train", "test") for rel in saved[side]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write_split_record(path: Path, scan: FolderScan) -> None:
    from fastcifar.fileio import write_json

    sides = {side: sorted(rel for rel, s in scan.split_update.items() if s == side) for side in ("train", "test")}
    write_json(path, {"version": SPLIT_RECORD_VERSION, "root": str(scan.root), "fraction": HELD_OUT_FRACTION,
                      "seed": HELD_OUT_SEED, **sides})


def cache_key(scan: FolderScan, size: int) -> str:
    digest = hashlib.sha256(json.dumps({"version": CACHE_VERSION, "size": size, "classes": scan.class_names,
                                        "test_source": scan.test_source}).encode())
    for split in sorted(scan.files):
        for rel, label in scan.files[split]:
            st = (scan.root / rel).stat()
            digest.update(f"{split}\0{rel}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _decode(scan: FolderScan, split: str, size: int, skipped: dict, progress: Callable | None,
            workers: int) -> tuple[CifarSplit, list[str]]:
    """(the split's decoded images and labels, the relative paths of the files that decoded)."""
    from fastcifar.data.images import load_image

    rows = scan.files.get(split, [])

    def one(row):
        rel, label = row
        try:
            return load_image(scan.root / rel, size), label, None
        except FastCifarError as exc:
            return None, label, (rel, str(exc))

    images, labels, accepted = [], [], []
    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow's decoders release the GIL
        for (rel, _), (pixels, label, problem) in zip(rows, pool.map(one, rows)):
            if problem:
                kind = "decompression bombs" if "decompression bomb" in problem[1] else "unreadable images"
                skipped.setdefault(kind, []).append(problem[0])
            else:
                images.append(pixels)
                labels.append(label)
                accepted.append(rel)
            if progress:
                progress(1)
    if not images:
        return CifarSplit(np.zeros((0, size, size, 3), np.uint8), np.zeros(0, np.int64)), []
    return CifarSplit(np.stack(images), np.asarray(labels, np.int64)), accepted


def skipped_summary(skipped: dict) -> str | None:
    """One line: what was skipped and why, with the first file of each reason."""
    if not any(skipped.values()):
        return None
    parts = [f"{len(paths)} {reason} (e.g. {paths[0]})" for reason, paths in sorted(skipped.items()) if paths]
    return "skipped " + "; ".join(parts)


def load_image_folder(data_dir: Path | str, *, size: int = DEFAULT_STORAGE_SIZE, cache_dir: Path | str | None = None,
                      progress: bool = True, workers: int | None = None) -> CifarData:
    """The folder as CifarData (images decoded to `size` px, cached); `.info` says where everything came from."""
    from fastcifar.fileio import atomic_path

    root = Path(data_dir).expanduser().resolve()
    cache_root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    if _inside(cache_root, root) and cache_dir is None:  # $FASTCIFAR_CACHE may not point into the data
        cache_root = default_cache_dir(environ=False)
    record = split_record_path(cache_root, root)
    scan = scan_folder(root, split_record=record)
    key = cache_key(scan, size)
    cache = cache_root / f"{scan.root.name}-{key}.npz"
    info = {"dataset": "folder", "root": str(scan.root), "class_names": list(scan.class_names),
            "test_source": scan.test_source, "storage_size": size, "cache": str(cache), "cache_key": key,
            "notes": list(scan.notes)}
    if scan.test_source.startswith("held out"):
        info["split_record"] = str(record)
        if scan.split_update is not None:
            try:
                _write_split_record(record, scan)
            except OSError as exc:  # unrecorded, the split is still the seeded one of the files as they are
                info["notes"].append(f"the held-out split could not be recorded in {record.parent} "
                                     f"({exc.strerror or exc})")
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                data = _from_arrays(z, scan, info)
                info.update(cached=True)
                return data
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # truncated, corrupt, foreign
            print(f"note: the decoded-image cache {cache} is damaged ({type(exc).__name__}); decoding the folder "
                  "again", file=sys.stderr)
    skipped = {k: list(v) for k, v in scan.skipped.items()}
    total = sum(len(v) for v in scan.files.values())
    with _bar(progress, total, f"decoding {scan.root.name}") as advance:
        decoded = {s: _decode(scan, s, size, skipped, advance, workers or min(8, (os.cpu_count() or 1) + 2))
                   for s in ("train", "test")}
    splits = {s: split for s, (split, _) in decoded.items()}
    accepted = {s: rels for s, (_, rels) in decoded.items()}
    if len(splits["train"]) == 0:
        raise DataError(f"no readable training image in {scan.train_dir}" + (
            f" ({skipped_summary(skipped)})" if skipped_summary(skipped) else ""))
    if len(splits["test"]) == 0:
        why = ("every class has a single image, so none is held out" if scan.test_source.startswith("held out")
               else f"{scan.test_source} holds no readable image")
        raise DataError(f"{scan.root} has no test images: {why}. Add images (or a test/ folder)")
    present = set(np.unique(splits["train"].labels).tolist())
    lost = [scan.class_names[i] for i in range(len(scan.class_names)) if i not in present]
    if lost:
        raise DataError(f"{scan.train_dir / lost[0]} has no readable image left ({skipped_summary(skipped)})")
    summary = skipped_summary(skipped)
    info.update(skipped={k: len(v) for k, v in skipped.items()}, skipped_summary=summary, cached=False)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, train_x=splits["train"].images, train_y=splits["train"].labels,
                         test_x=splits["test"].images, test_y=splits["test"].labels,
                         train_files=np.array(accepted["train"], dtype=str),
                         test_files=np.array(accepted["test"], dtype=str), info=np.array(json.dumps(info)))
    except OSError as exc:  # no cache is slower, never wrong
        info["notes"].append(f"the decoded images could not be cached in {cache.parent} ({exc.strerror or exc})")
    return CifarData(train=splits["train"], test=splits["test"], class_names=scan.class_names, root=scan.root,
                     info=info, files=_absolute(scan.root, accepted))


def _absolute(root: Path, accepted: dict) -> dict:
    return {split: [str(root / rel) for rel in rels] for split, rels in accepted.items()}


def relative_files(root: Path | str, files: list[str]) -> list[str]:
    """`files` (absolute, as CifarData.files holds them) relative to the folder: what a run records."""
    return [str(Path(f).relative_to(root)) for f in files]


def recorded_test_split(data: CifarData, recorded: list[str]) -> tuple[CifarSplit, str | None]:
    """The test split a run was trained against (`recorded`: its test files, relative to the folder), taken from the
    folder as it is now: (split, a note when the folder's own test split has changed since, else None). The images
    come from whichever split holds them now (a held-out image can have moved into the training share). Files that are
    gone or unreadable now are one DataError: that run's test accuracy can no longer be measured on its images."""
    current = relative_files(data.root, data.files["test"])
    if current == list(recorded):
        return data.test, None
    where = {}
    for split in ("train", "test"):
        for i, rel in enumerate(relative_files(data.root, data.files[split])):
            where[rel] = (split, i)
    missing = [rel for rel in recorded if rel not in where]
    if missing:
        raise DataError(f"{len(missing)} of the {len(recorded)} test images the run held out are no longer readable "
                        f"in {data.root} (e.g. {missing[0]}): its accuracy cannot be measured on the images it was "
                        "tested on. Restore them, or train again on the folder as it is")
    images = np.stack([getattr(data, where[rel][0]).images[where[rel][1]] for rel in recorded])
    labels = np.array([getattr(data, where[rel][0]).labels[where[rel][1]] for rel in recorded], np.int64)
    moved = sum(where[rel][0] == "train" for rel in recorded)
    note = (f"{data.root} changed since the run trained: its {len(recorded)} held-out test images are used, not the "
            f"folder's current test split ({len(current)} images" + (f"; {moved} of the run's are now in the "
                                                                       "training share" if moved else "") + ")")
    return CifarSplit(images, labels), note


def _from_arrays(z, scan: FolderScan, info: dict) -> CifarData:
    saved = json.loads(str(z["info"]))
    info.update(skipped=saved.get("skipped", {}), skipped_summary=saved.get("skipped_summary"))
    return CifarData(train=CifarSplit(z["train_x"], z["train_y"].astype(np.int64)),
                     test=CifarSplit(z["test_x"], z["test_y"].astype(np.int64)),
                     class_names=scan.class_names, root=scan.root, info=info,
                     files=_absolute(scan.root, {s: z[f"{s}_files"].tolist() for s in ("train", "test")}))


def original_size_stats(data_dir: Path | str) -> dict:
    """min / median / max width and height of the folder's images, from their headers (nothing is decoded)."""
    from PIL import Image

    scan = scan_folder(data_dir)
    widths, heights = [], []
    for rows in scan.files.values():
        for rel, _ in rows:
            try:
                with Image.open(scan.root / rel) as image:
                    widths.append(image.size[0])
                    heights.append(image.size[1])
            except (OSError, ValueError, Image.DecompressionBombError):
                continue  # counted as skipped when decoded

    def describe(values):
        return {"min": int(min(values)), "median": int(np.median(values)), "max": int(max(values))} if values \
            else {"min": None, "median": None, "max": None}

    return {"count": len(widths), "width": describe(widths), "height": describe(heights)}


class _bar:
    """A rich progress bar on stderr (or nothing); the context value advances it."""

    def __init__(self, enabled: bool, total: int, label: str):
        self.enabled, self.total, self.label = enabled, total, label

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.progress = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self.progress.__enter__()
        task = self.progress.add_task(self.label, total=self.total)
        return lambda n: self.progress.advance(task, n)

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.__exit__(*exc)
