"""Atomic file writes (every file fastcifar writes appears whole or not at all: temp file + rename), output
directories that fail with one message naming them, JSON lines and file digests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(dest: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it is renamed onto `dest`, on failure removed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600, and some writers (safetensors 0.8's save_file) reset the mode of the file they were
        # given: set the permissions an ordinary open() would (0666 minus the umask) after the writer is done, so
        # models and engines stay readable by a serving user or a Docker volume's reader.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def make_dir(path: Path | str, what: str) -> Path:
    """Create output directory `path` (and its parents) now, before any work is spent on what goes in it.

    A path that cannot be a directory (under a file, in /proc, no permission) is one FastCifarError naming the
    option (`what`, e.g. '--results-dir'), the path and the reason."""
    from fastcifar.errors import FastCifarError

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


def write_bytes(dest: Path | str, data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
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
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def file_digest(path: Path | str, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file read in chunks (md5 for the CIFAR archive, sha256 for models and engines)."""
    # usedforsecurity=False: md5 here checks integrity, and FIPS builds refuse md5 without it.
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
