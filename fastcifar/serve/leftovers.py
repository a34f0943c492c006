"""What a Triton server started by this process could leave behind, found while it runs and removed when it stops.

Owns `Leftovers` (made before the server starts, `started()` once it is ready): `watch()` notes this process's
descendants (pid and start time, so a reused pid is never touched), the shared-memory segments they map and the
model folder the stub was started with; after PyTriton's own stop, `cleanup()` ends what is alive (SIGTERM, then
SIGKILL; resource trackers last) and removes what is on disk. Linux only (/proc); elsewhere it does nothing.
Its /proc readers (`process_stat`, `descendants`, `is_running`) serve the tests that check what servers leave. What
a hard stop left, and why this exists: docs/serving.md, "Stopping".
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

SHM = Path("/dev/shm")
TMP = Path("/tmp")  # tritonserver and its Python backend name their folders here, whatever TMPDIR says


def process_stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, start time in clock ticks, state) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[19]), fields[0]


def descendants(root: int) -> list[int]:
    """Every process below `root`, children first (/proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := process_stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def is_running(pid: int) -> bool:
    """The process exists and has not ended (a zombie has ended; its parent has yet to reap it)."""
    stat = process_stat(pid)
    return stat is not None and stat[2] != "Z"


def _mapped_shm(pid: int) -> set[Path]:
    """The /dev/shm files a process has open or mapped."""
    found = set()
    try:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
            if path.startswith(str(SHM) + "/"):
                found.add(Path(path.split(" (deleted)")[0]))
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith(str(SHM) + "/"):
                found.add(Path(target))
    except OSError:
        pass
    return found


class Leftovers:
    """Call `watch()` while the server runs (cheap: a /proc walk), `cleanup()` once it has been stopped."""

    def __init__(self, root: int | None = None):
        self.root = root or os.getpid()
        self.processes: dict[int, tuple[int, str]] = {}  # pid -> (start time, first words of its command line)
        self.shm: set[Path] = set()
        self.dirs: set[Path] = set()
        self._env_dirs_before = set(TMP.glob("python_env_*"))

    def watch(self) -> None:
        for pid in descendants(self.root):
            stat = process_stat(pid)
            if stat is None:
                continue
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            self.processes.setdefault(pid, (stat[1], " ".join(args[:4])[:160]))
            self.shm |= _mapped_shm(pid)
            for arg in args:  # the stub runs TMP/folderXXXXXX/<version>/model.py: tritonserver's localized copy
                path = Path(arg)
                if path.name == "model.py" and len(path.parts) >= 4 and path.parents[1].parent == TMP \
                        and path.parents[1].name.startswith("folder"):
                    self.dirs.add(path.parents[1])
        self.shm |= set(SHM.glob(f"pytrtion{self.root}-*"))  # PyTriton names its segment after this process

    def started(self) -> None:
        """Call once the server is ready: the Python backend's (empty) execution-env folder appears while
        tritonserver starts, so one that appeared since this object was made is this server's."""
        self.dirs |= {d for d in TMP.glob("python_env_*") if d not in self._env_dirs_before}
        self.watch()

    def alive(self) -> list[int]:
        """The watched processes that still run (the same process: pid and start time)."""
        out = []
        for pid, (start, _) in self.processes.items():
            stat = process_stat(pid)
            if stat is not None and stat[1] == start and stat[2] != "Z":
                out.append(pid)
        return out

    def cleanup(self, grace_s: float = 5.0) -> list[str]:
        """End every watched process still running and remove the segments and folders left; returns what it had
        to do (empty after a clean stop)."""
        self.watch()  # what started since the last look
        done = []
        # multiprocessing's resource trackers go last: one unlinks its clients' segments once they are all gone. This
        # process's own tracker ends with it (its only client), after cleaning up: it is left alone.
        trackers = {pid for pid, (_, cmd) in self.processes.items() if "resource_tracker" in cmd}
        own = {pid for pid in trackers if (process_stat(pid) or (0,))[0] == self.root}
        self.processes = {pid: v for pid, v in self.processes.items() if pid not in own}
        trackers -= own
        for group in ([p for p in self.alive() if p not in trackers], [p for p in self.alive() if p in trackers]):
            if group and group[0] in trackers:  # a tracker unlinks its segments once every client is gone
                _wait_gone(self, group, grace_s)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                group = [p for p in group if p in self.alive()]
                for pid in group:
                    try:
                        os.kill(pid, sig)
                        done.append(f"{sig.name} {pid} ({self.processes[pid][1]})")
                    except ProcessLookupError:
                        pass
                _wait_gone(self, group, grace_s if sig == signal.SIGTERM else 2.0)
        for path in sorted(self.shm):
            try:
                path.unlink()
                done.append(f"removed {path}")
            except FileNotFoundError:
                pass
            except OSError as exc:
                done.append(f"could not remove {path}: {exc.strerror}")
        for folder in sorted(self.dirs):
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
                done.append(f"removed {folder}")
        return done


def _wait_gone(leftovers: Leftovers, pids: list[int], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and set(pids) & set(leftovers.alive()):
        time.sleep(0.1)
