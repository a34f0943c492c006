"""Atomic, durable file writes (every file fastcifar writes appears whole or not at all, and survives a power cut
once written: temp file, fsync, rename, fsync of the directory), the one message a full disk gives, an exclusive
lock per output folder (`DirLock`), the leftovers a killed write can leave and their removal, output directories
that fail with one message naming them, JSON lines and file digests."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from fastcifar.errors import FastCifarError

TEMP_SUFFIX = ".tmp"
# What a write killed before its rename leaves: ours (mkstemp: ".<name>.<8 random chars>.tmp") and safetensors
# 0.8's own temp file (".tmp" and 6 random characters) from runs that save_file wrote before fastcifar wrote
# safetensors bytes itself (docs/run-directory.md, "Reliability").
_OUR_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")
_SAFETENSORS_TEMP = re.compile(r"^\.tmp[A-Za-z0-9]{6}$")
LOCK_FILE = ".fastcifar.lock"
# A write that failed for want of space: ENOSPC, a quota, or the text the libraries that wrap it use (safetensors:
# "I/O error: No space left on device (os error 28)"; torch.save to a path: "[enforce fail at
# inline_container.cc:...] unexpected pos ...", which names no cause at all).
_FULL = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXT = ("No space left on device", "Disk quota exceeded")
_LIBRARY_WRITE_FAILED = ("[enforce fail at inline_container.cc", "PytorchStreamWriter failed")


class WriteFailed(FastCifarError, OSError):
    """A file could not be written: one message naming it. An OSError too, so a caller for whom the write is
    optional (a cache) still catches it as one."""


class DiskFull(WriteFailed):
    """A write failed for want of space: the message names the disk (its folder and free space) and the file."""


def replace(src: Path | str, dest: Path | str) -> None:
    """The rename that makes a written file visible: every write and every move of fastcifar's own files goes
    through here (tests/test_faults.py stops a run at each call, the way a kill would)."""
    os.replace(src, dest)


def remove(path: Path | str) -> None:
    """Remove one of fastcifar's own files if it is there (tests/test_faults.py stops a run at each call too)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _sync(fd: int) -> None:
    """fsync: the one call that makes written data durable (bench/durability.py times it, and switches it off to
    measure what it costs)."""
    os.fsync(fd)


def _open_temp(path: Path) -> BinaryIO:
    """The file object a write fills (tests/test_faults.py opens /dev/full here: a real ENOSPC from the kernel)."""
    return open(path, "wb")


def fsync_dir(folder: Path | str) -> None:
    """Make a rename in `folder` durable: without it a power cut can undo the rename even though the file's data was
    synced. Filesystems that cannot sync a directory (some network ones) answer EINVAL: nothing more can be done."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        _sync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def write_error(exc: BaseException, dest: Path) -> WriteFailed | None:
    """The one message for an exception raised while writing `dest` (None: not a write failure, re-raise it)."""
    text = str(exc)
    full = (isinstance(exc, OSError) and exc.errno in _FULL) or any(t in text for t in _FULL_TEXT)
    library = isinstance(exc, RuntimeError) and any(t in text for t in _LIBRARY_WRITE_FAILED)
    if not (full or library):
        if isinstance(exc, OSError) and exc.errno is not None:
            return WriteFailed(f"cannot write {dest}: {exc.strerror or exc}")
        return None
    free = _free_bytes(dest.parent)
    # torch's own failure names no cause (on a full tmpfs: "unexpected pos 11182464 vs 11182360"): with next to
    # nothing free - measured while the cut temp file still holds its bytes - it is the full disk.
    if full or (free is not None and free < LOW_SPACE):
        return DiskFull(f"no space left on the disk holding {dest.parent} ({_size(free)} free) while writing "
                        f"{dest.name}")
    return WriteFailed(f"cannot write {dest}: the write failed ({text.splitlines()[0][:120]}); the disk holding "
                    f"{dest.parent} has {_size(free)} free")


LOW_SPACE = 16 * 2**20


def _free_bytes(folder: Path) -> int | None:
    import shutil

    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _size(n: int | None) -> str:
    if n is None:
        return "unknown space"
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.1f} GiB"


@contextlib.contextmanager
def atomic_path(dest: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `dest` for a writer that takes a path; on success the file is synced to disk,
    renamed onto `dest` and the rename synced; on failure it is removed. A failed write (a full disk, a quota, a
    read-only folder) is one FastCifarError naming the file and the disk, and `dest` stays as it was."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=TEMP_SUFFIX, dir=dest.parent)
    except OSError as exc:
        raise (write_error(exc, dest) or exc) from None
    os.close(fd)
    tmp = Path(name)
    try:
        try:
            yield tmp
            _commit(tmp, dest)
        except Exception as exc:  # noqa: BLE001 - only write failures are translated, the rest re-raised
            error = write_error(exc, dest)
            if error is None:
                raise
            raise error from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_file(dest: Path | str) -> Iterator[BinaryIO]:
    """atomic_path for fastcifar's own writers: an open binary file to fill (torch.save takes one too, and then
    names its archive 'archive' rather than after the temp file: the bytes depend on the content only)."""
    with atomic_path(dest) as tmp, _open_temp(tmp) as fh:
        yield fh


def _commit(tmp: Path, dest: Path) -> None:
    # fsync before the rename: otherwise a power cut can leave `dest` renamed but empty (ext4's delayed allocation);
    # reopened by path, as writers that take a path (onnx.save, matplotlib) have closed theirs.
    fd = os.open(tmp, os.O_RDONLY)
    try:
        _sync(fd)
    finally:
        os.close(fd)
    # mkstemp creates 0600: set the permissions an ordinary open() would (0666 minus the umask), so models and
    # engines stay readable by a serving user or a Docker volume's reader.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    replace(tmp, dest)
    fsync_dir(dest.parent)


def is_leftover(name: str, *, foreign: bool = False) -> bool:
    """Whether a file name is what a killed write or writer left: our temp file or lock file, and with `foreign`
    safetensors' own temp file too (only in a folder fastcifar owns whole: a run directory)."""
    return (name == LOCK_FILE or bool(_OUR_TEMP.match(name))
            or (foreign and bool(_SAFETENSORS_TEMP.match(name))))


def remove_leftovers(folder: Path | str, *, foreign: bool = False,
                     owned: Callable[[str], bool] | None = None) -> list[str]:
    """Remove the temp files killed writes left in `folder` (not the lock: its holder removes it); call it only
    while holding the folder's DirLock, so no live writer's temp file is taken - or, in a folder shared with
    other writers, with `owned`: only the temp files of the files whose names it accepts (the caller's own
    outputs). Returns the names removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        if path.name == LOCK_FILE or not path.is_file() or not is_leftover(path.name, foreign=foreign):
            continue
        if owned is not None and not (_OUR_TEMP.match(path.name) and owned(path.name[1:-len(".12345678.tmp")])):
            continue
        remove(path)
        removed.append(path.name)
    return removed


def holds_nothing(folder: Path | str) -> bool:
    """True when `folder` holds no file but what killed writes left (a run or report killed before its first
    file): such a folder may be started again."""
    return not any(not is_leftover(p.name) for p in Path(folder).iterdir())


class DirLock:
    """An exclusive lock on an output folder for the life of its one writer: fcntl.flock on FOLDER/.fastcifar.lock,
    which holds the writer's PID. A second writer gets one message naming that PID. The kernel drops an flock when
    its process dies, however it dies (SIGKILL, OOM killer, power cut: the next boot has no locks), so a lock file
    left by a dead writer is taken over by the next one; the file itself is removed by a writer that ends."""

    def __init__(self, folder: Path | str, what: str = "the folder"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> "DirLock":
        import fcntl

        make_dir(self.folder, self.what)
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise (write_error(exc, self.path) or exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                who = f"PID {holder}" if holder.isdigit() else "a process that is starting"
                raise FastCifarError(f"{self.folder} is in use by another fastcifar process ({who}); wait for it to "
                                     "end (or stop it), or choose another folder") from None
            try:  # the previous holder may have removed the file between our open and our flock: lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (in that order: nobody can lock the removed file afterwards)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            if os.fstat(self.fd).st_ino == os.stat(self.path).st_ino:
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def make_dir(path: Path | str, what: str) -> Path:
    """Create output directory `path` (and its parents) now, before any work is spent on what goes in it.

    A path that cannot be a directory (under a file, in /proc, no permission) is one FastCifarError naming the
    option (`what`, e.g. '--results-dir'), the path and the reason."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FastCifarError(f"{what} {path} cannot be created: {exc.strerror or exc}") from None
    return path


def first_missing(path: Path | str) -> Path | None:
    """The topmost ancestor of `path` (or `path` itself) that does not exist yet: what mkdir(parents) creates, so a
    command that fails can remove exactly what it created and never what existed."""
    path = Path(path)
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def remove_empty_dirs(top: Path | str) -> None:
    """Remove `top` and the directories under it when they hold no file (a failed command's empty output dirs)."""
    top = Path(top)
    if not top.is_dir():
        return
    for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()
    with contextlib.suppress(OSError):
        top.rmdir()


def write_bytes(dest: Path | str, data: bytes | memoryview) -> Path:
    with atomic_file(dest) as fh:
        fh.write(data)
    return Path(dest)


def write_text(dest: Path | str, text: str) -> Path:
    return write_bytes(dest, text.encode("utf-8"))


def write_json(dest: Path | str, obj: object) -> Path:
    return write_text(dest, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(dest: Path | str, obj: object) -> None:
    """Append one JSON line by rewriting the file atomically (metrics files are small: one line per epoch)."""
    dest = Path(dest)
    old = dest.read_text() if dest.exists() else ""
    write_text(dest, old + json.dumps(obj) + "\n")


def write_jsonl(dest: Path | str, rows: list) -> Path:
    """Write `rows` as JSON lines, atomically (replacing the file)."""
    return write_text(dest, "".join(json.dumps(row) + "\n" for row in rows))


def read_jsonl(path: Path | str) -> list[dict]:
    """Every line of a JSON-lines file as a dict ([] when there is no file); a damaged line is one FastCifarError
    naming the file and the line."""
    rows, bad = parse_jsonl(path)
    if bad is not None:
        raise FastCifarError(f"{path} is damaged: line {bad + 1} is not a JSON object (move the file away, or "
                             "restore it)")
    return rows


def parse_jsonl(path: Path | str) -> tuple[list[dict], int | None]:
    """(the JSON objects of the lines before the first damaged one, that line's index or None when all are whole)."""
    path = Path(path)
    if not path.exists():
        return [], None
    rows = []
    for i, line in enumerate(path.read_text(errors="replace").splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            return rows, i
        if not isinstance(row, dict):
            return rows, i
        rows.append(row)
    return rows, None


def read_json(path: Path | str, what: str = "", fix: str = "move it away or restore it") -> dict:
    """A JSON object from `path`, or one FastCifarError naming the file (`what` it is) and what to do (`fix`) when
    it cannot be read, is not JSON, or is not an object."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except OSError as exc:
        raise FastCifarError(f"cannot read {what or path.name} {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise FastCifarError(f"{path} is damaged (not JSON){f' - {what}' if what else ''}; {fix}") from None
    if not isinstance(obj, dict):
        raise FastCifarError(f"{path} is damaged (a JSON {type(obj).__name__}, not an object)"
                             f"{f' - {what}' if what else ''}; {fix}")
    return obj


def file_digest(path: Path | str, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file read in chunks (md5 for the CIFAR archive, sha256 for models and engines)."""
    # usedforsecurity=False: md5 here checks integrity, and FIPS builds refuse md5 without it.
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
