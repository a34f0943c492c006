"""Downloading and extracting the official CIFAR-10 archive: resumable, md5-verified, traversal-safe.

Owns the network and tar side of `fastcifar.data.cifar.ensure_cifar`: `download_archive` streams to
`<archive>.part` (resuming with an HTTP Range request after an interruption) and renames only after the md5
matches; `extract_archive` writes only regular files directly inside `cifar-10-batches-py/`; `fetch_official`
downloads only into a directory holding nothing but CIFAR files (never into a user's own folder of images).
"""

from __future__ import annotations

import gzip
import http.client
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable

from fastcifar.errors import DataError
from fastcifar.fileio import file_digest

# The official archive and the layout of what it holds (fastcifar/data/cifar.py reads that layout).
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"
CIFAR100_DIR = "cifar-100-python"
CIFAR100_FILES = ("train", "test", "meta")
# Why a missing dataset is not fetched, when the caller does not say (evaluate and export say their own).
NO_DOWNLOAD = "downloading is off (--no-download)"

def md5sum(path: Path) -> str:
    return file_digest(path, "md5")


# ---------------------------------------------------------------------------------------------- download


def _progress_bar(enabled: bool):
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TimeRemainingColumn,
                               TransferSpeedColumn)

    # stderr: stdout carries the command's result (e.g. `fastcifar data --json`).
    return Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                    disable=not enabled, transient=True)


def download_archive(url: str, dest: Path, *, md5: str, progress: bool = True, timeout: float = 30.0,
                     opener: Callable = urllib.request.urlopen) -> Path:
    """Download `url` to `dest` via `dest.part`, resuming a previous partial download when the server allows.

    The file is renamed to `dest` only after its md5 matches, so `dest` is either absent or verified. An
    interrupted transfer keeps `dest.part` (a prefix of the file) for the next call to resume with a Range
    request; a server that ignores Range (answers 200) restarts the file from zero.
    """
    from fastcifar.fileio import first_missing, remove_empty_dirs

    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    created = first_missing(dest.parent)  # what a failed download removes again (never a directory that existed)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {dest.parent}: {exc.strerror or exc}") from None
    have = part.stat().st_size if part.is_file() else 0
    try:
        response = _open_download(url, dest, have, timeout, opener)
        if response is not None:  # None: the server says the part file is already whole (416)
            with response:
                start = _resume_offset(response, have, url, part)
                length = response.headers.get("Content-Length")
                total = start + int(length) if length and length.isdigit() else None
                _stream_to(response, part, start, total, url, progress)
    except BaseException:
        if created is not None:  # offline, refused, interrupted: no empty folder stays (a .part file to resume does)
            remove_empty_dirs(created)
        raise
    actual = md5sum(part)
    if actual != md5:
        part.unlink(missing_ok=True)
        raise DataError(f"downloaded {url} has md5 {actual}, expected {md5}; the partial file was deleted. "
                        "Run the command again to retry.")
    os.replace(part, dest)
    return dest


def _open_download(url: str, dest: Path, have: int, timeout: float, opener: Callable):
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "fastcifar"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        return opener(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:  # the part file is already complete (or longer: the md5 decides)
            return None
        raise _offline_error(url, dest, f"HTTP {exc.code} {exc.reason}") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError is an OSError
        raise _offline_error(url, dest, str(getattr(exc, "reason", exc))) from None


def _resume_offset(response, have: int, url: str, part: Path) -> int:
    """Where the body starts in the file: `have` for a 206 resuming our part, 0 for anything else."""
    if not have or getattr(response, "status", 200) != 206:
        return 0  # a 200 to a Range request means: start over
    content_range = response.headers.get("Content-Range", "")
    match = re.match(r"bytes\s+(\d+)-", content_range)
    if match is None or int(match.group(1)) != have:
        part.unlink(missing_ok=True)
        raise DataError(f"{url} answered the resume request with range {content_range!r}, not from byte "
                        f"{have}; the partial download was deleted. Run the command again.")
    return have


def _stream_to(response, part: Path, start: int, total: int | None, url: str, progress: bool) -> None:
    """Append (from `start` > 0) or write the response body to `part`; raise DataError if it stops early."""
    try:
        fh = open(part, "ab" if start else "wb")
    except OSError as exc:
        raise DataError(f"cannot write {part}: {exc.strerror or exc}") from None
    received = 0
    with fh, _progress_bar(progress) as bar:
        task = bar.add_task(f"downloading {part.name[:-5]}", total=total, completed=start)
        while True:
            try:
                block = response.read(1 << 16)
            except (OSError, http.client.HTTPException) as exc:
                raise _interrupted(url, part, str(exc) or type(exc).__name__) from None
            if not block:
                break
            try:
                fh.write(block)
            except OSError as exc:
                raise DataError(f"cannot write {part}: {exc.strerror or exc}") from None
            received += len(block)
            bar.advance(task, len(block))
    # http.client returns b"" (no exception) when the server closes early: compare with Content-Length.
    if total is not None and start + received < total:
        raise _interrupted(url, part, f"connection closed after {start + received} of {total} bytes")


def _interrupted(url: str, part: Path, reason: str) -> DataError:
    return DataError(f"download of {url} interrupted ({reason}); run the command again to resume from {part}")


def _offline_error(url: str, dest: Path, reason: str) -> DataError:
    return DataError(f"cannot download CIFAR-10 from {url} ({reason}). If you are offline, copy "
                     f"{ARCHIVE_NAME} into {dest.parent} or point --data-dir (or $FASTCIFAR_DATA) at a "
                     f"directory holding {BATCHES_DIR}/.")


def _member_file_name(member: tarfile.TarInfo, archive: Path, top: str = BATCHES_DIR) -> str | None:
    """The file name to extract `member` to, None to skip it (the top directory); refuses anything unsafe."""
    parts = PurePosixPath(member.name).parts
    if member.isdir() and parts == (top,):
        return None
    unsafe = (member.name.startswith("/") or "\\" in member.name or ".." in parts
              or len(parts) != 2 or parts[0] != top or not member.isfile())
    if unsafe:
        raise DataError(f"{archive} contains an unexpected entry '{member.name}'; refusing to extract it. "
                        "Delete the archive and download the official one.")
    return parts[1]


def extract_archive(archive: Path, data_dir: Path, *, top: str = BATCHES_DIR,
                    required: str = TRAIN_FILES[0]) -> Path:
    """Extract the official archive's batches safely into `data_dir/<top>` (atomically): `cifar-10-batches-py`,
    or CIFAR-100's `cifar-100-python` (fastcifar/data/cifar100.py), which must hold `required`.

    Only regular files directly inside `<top>/` are extracted: absolute paths, `..`, links and devices are
    refused, so a hostile archive cannot write outside the target.
    """
    target = data_dir / top
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=data_dir))
    except OSError as exc:
        raise DataError(f"cannot extract {archive} into {data_dir}: {exc.strerror or exc}") from None
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:  # streamed: one pass over the gzip stream
                name = _member_file_name(member, archive, top)
                if name is None:
                    continue
                with tar.extractfile(member) as source, open(tmp / name, "wb") as out:
                    shutil.copyfileobj(source, out)
        if not (tmp / required).exists():
            raise DataError(f"{archive} has no {top}/{required}")
        _move_into(tmp, target)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{archive} is not a readable tar.gz archive ({exc}). Delete it and download "
                        "again.") from None
    except OSError as exc:
        raise DataError(f"cannot extract {archive} into {target}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def fetch_official(data_dir: Path, archive_name: str, *, find: Callable[[Path], Path | None], url: str, md5: str,
                   top: str, required: str, name: str, download: bool, progress: bool,
                   no_download: str = NO_DOWNLOAD) -> Path:
    """The dataset's files under `data_dir` (`find(data_dir)`: where they are, None when absent); when absent, the
    official archive `data_dir/archive_name` verified (downloaded first when missing and `download`) and extracted
    into `data_dir/top`, then found. The shared path of CIFAR-10 (cifar.ensure_cifar) and CIFAR-100
    (cifar100.ensure_cifar100)."""
    found = find(data_dir)
    if found is not None:
        return found
    archive = data_dir / archive_name
    if not archive.exists():
        if not download:
            raise DataError(f"{name} not found in {data_dir}; {no_download}. Point --data-dir (or $FASTCIFAR_DATA) at "
                            f"a directory holding {top}/ or {archive_name}.")
        _refuse_foreign_folder(data_dir, name, top, archive_name)
        download_archive(url, archive, md5=md5, progress=progress)
    else:
        try:
            actual = md5sum(archive)
        except OSError as exc:
            raise DataError(f"cannot read {archive}: {exc.strerror or exc}") from None
        if actual != md5:
            raise DataError(f"{archive} has md5 {actual}, expected {md5}: the archive is corrupt or not the "
                            "official one. Delete it and download again.")
    extract_archive(archive, data_dir, top=top, required=required)
    found = find(data_dir)
    if found is None:
        raise DataError(f"{archive} did not contain {top}/ with {name}'s files")
    return found


def default_cache_dir(environ: bool = True) -> Path:
    """`$FASTCIFAR_CACHE/folders`, else (or with `environ=False`) `~/.cache/fastcifar/folders`: where folder.py keeps
    what it derives from an image folder (never inside it). Here because the download guard must recognise it."""
    env = os.environ.get("FASTCIFAR_CACHE") if environ else None
    return Path(env).expanduser() / "folders" if env else Path.home() / ".cache" / "fastcifar" / "folders"


def _foreign_entries(data_dir: Path) -> list[str]:
    """What in `data_dir` is neither CIFAR-10's nor CIFAR-100's files nor fastcifar's own folder cache (the default
    data dir, ~/.cache/fastcifar, is also where the image folders' decode cache lives). Hidden names (.DS_Store, a
    `.extract-*` left by a killed extraction) do not count."""
    own_files = {ARCHIVE_NAME, ARCHIVE_NAME + ".part", CIFAR100_ARCHIVE, CIFAR100_ARCHIVE + ".part", *TRAIN_FILES,
                 *TEST_FILES, META_FILE, *CIFAR100_FILES}
    caches = {default_cache_dir().resolve(), default_cache_dir(environ=False).resolve()}
    try:
        entries = sorted(data_dir.iterdir()) if data_dir.is_dir() else []
    except OSError:
        return []  # unreadable: download_archive says so when it writes there
    # also at home in a data folder: model weights and torch's hub cache (docs/docker.md puts both in ./data, the
    # container's FASTCIFAR_DATA, with TORCH_HOME=./data/torch), so an offline setup still gets its download
    weights = {".pth", ".pt", ".safetensors"}
    return [p.name + ("/" if p.is_dir() else "") for p in entries
            if not (p.name.startswith(".") or (p.is_file() and (p.name in own_files or p.suffix in weights))
                    or (p.is_dir() and (p.name in (BATCHES_DIR, CIFAR100_DIR, "torch") or p.resolve() in caches)))]


def _refuse_foreign_folder(data_dir: Path, name: str, top: str, archive_name: str) -> None:
    """One DataError, before any request, when `data_dir` holds anything but CIFAR files: --data-dir pointed at a
    user's own folder (photos, class folders) must never receive a 170 MB archive and its extracted batches."""
    foreign = _foreign_entries(data_dir)
    if not foreign:
        return
    shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
    # a check against download.py's neighbours would import folder.py, which imports this module: name both ways
    hint = (f"If it is a folder of images, give --dataset folder (or auto) to train on it; else point --data-dir at "
            f"an empty or new directory, or at one holding {top}/ or {archive_name}")
    raise DataError(f"{name} not found in {data_dir}, and it holds other files ({shown}): nothing is downloaded "
                    f"into a folder of other files. {hint}.")


def _move_into(tmp: Path, target: Path) -> None:
    """Rename the extracted directory onto `target`; into it file by file when it already exists."""
    if not target.is_dir():
        os.replace(tmp, target)
        return
    for path in tmp.iterdir():  # an incomplete earlier copy: replace its files with the verified ones
        os.replace(path, target / path.name)


