"""Where code runs: device resolution, distributed (torchrun) context, seeding, and the env.json record."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fastcifar import __version__
from fastcifar.errors import FastCifarError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info_from_env() -> DistInfo:
    """Rank/world size as torchrun sets them (RANK, LOCAL_RANK, WORLD_SIZE); single process otherwise."""
    return DistInfo(rank=int(os.environ.get("RANK", 0)), local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                    world_size=int(os.environ.get("WORLD_SIZE", 1)))


def resolve_device(name: str = "auto", local_rank: int = 0):
    """'auto' -> cuda:<local_rank> when CUDA is there, else cpu. 'cuda' without CUDA is a user error."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise FastCifarError("--device cuda was asked for but CUDA is not available on this machine "
                                 "(use --device cpu or --device auto)")
        if name == "cuda":
            name = f"cuda:{local_rank}"
        index = name.partition(":")[2]
        if not index.isdigit():
            raise FastCifarError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)")
        if int(index) >= torch.cuda.device_count():  # torch.device accepts any N; the first tensor there fails
            raise FastCifarError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                                 f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif name != "cpu":
        raise FastCifarError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)")
    return torch.device(name)


def table_console():
    """A rich Console for tables on stdout: the terminal's width on a terminal; in a log or a pipe (no terminal,
    where rich assumes 80 columns and cuts cells short) wide enough to print every column whole."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, 4096))  # tables take what they need


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


PACKAGE_DIR = Path(__file__).resolve().parent


def _git(args: list[str], cwd: Path, timeout: float = 10) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


@functools.lru_cache(maxsize=None)  # asked by git_sha and git_diff for every run's env.json: one git call
def fastcifar_checkout(package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The git checkout fastcifar itself runs from: the work tree whose top holds this package. None for an installed
    package, even one inside a user's own git project (its HEAD and changes describe their code, not fastcifar)."""
    top = _git(["rev-parse", "--show-toplevel"], package_dir, timeout=5)
    if not top or Path(top.strip()).resolve() != package_dir.parent:
        return None
    return package_dir.parent


def git_sha(checkout: Path | None = None) -> str | None:
    checkout = checkout or fastcifar_checkout()
    out = _git(["rev-parse", "HEAD"], checkout, timeout=5) if checkout else None
    return out.strip() or None if out else None


def git_diff(checkout: Path | None = None) -> str | None:
    """The uncommitted changes of the checkout fastcifar runs from, untracked files included (a new source file is a
    change too): '' when clean, None when fastcifar does not run from its own checkout or git is missing."""
    checkout = checkout or fastcifar_checkout()
    if checkout is None:
        return None
    tracked = _git(["diff", "HEAD", "--no-color"], checkout)
    untracked = _git(["ls-files", "--others", "--exclude-standard", "-z"], checkout)
    if tracked is None or untracked is None:
        return None
    parts = [tracked]
    for name in filter(None, untracked.split("\0")):
        try:  # `git diff --no-index` exits 1 when the files differ, which they always do here
            out = subprocess.run(["git", "diff", "--no-color", "--no-index", "--", "/dev/null", name], cwd=checkout,
                                 capture_output=True, text=True, timeout=10)
            parts.append(out.stdout or f"untracked: {name}\n")
        except (OSError, subprocess.SubprocessError):
            parts.append(f"untracked: {name}\n")
    return "".join(parts)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_vector_extensions() -> list[str]:
    """The CPU's vector extensions that decide its kernels (AVX2, AVX-512 parts, AMX, AVX-VNNI), from /proc/cpuinfo's
    flags; [] where it cannot be read. CPU figures name them: an AVX2-only machine trains several times slower."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted({f for f in flags.split() if f.startswith(("avx512", "amx", "avx2", "avx_vnni"))})


def nvidia_driver() -> str | None:
    """The NVIDIA driver version nvidia-smi reports, or None (no driver, no nvidia-smi)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def _git_state(diff: str | None) -> dict:
    import hashlib

    if diff is None:
        return {"git_dirty": None, "git_diff_sha256": None, "git_diff_bytes": None}
    return {"git_dirty": bool(diff), "git_diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
            "git_diff_bytes": len(diff.encode())}


_NOT_READ = object()


def package_version(name: str) -> str | None:
    """The installed version of the distribution `name` (pip's name, e.g. nvidia-pytriton), None when absent."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def env_info(command: list[str] | None = None, diff=_NOT_READ) -> dict:
    """Versions, machine, GPU and git sha: written as env.json beside every result. `diff`: the git_diff() the caller
    already read (so a file it writes and the hash recorded here come from one read)."""
    import torch

    info = {
        "fastcifar": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "driver": nvidia_driver(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # CPU figures depend on it (docs/development.md)
        "torch_threads": torch.get_num_threads(),
        "git_sha": git_sha(),
        **_git_state(git_diff() if diff is _NOT_READ else diff),
        "command": command if command is not None else sys.argv,
        "gpus": [],
    }
    for module in ("torchvision", "nvidia.dali", "onnx", "onnxruntime", "tensorrt"):
        try:
            mod = __import__(module, fromlist=["__version__"])
            info[module.split(".")[-1]] = getattr(mod, "__version__", "unknown")
        except Exception:  # noqa: BLE001 - missing or broken optional library: record its absence
            info[module.split(".")[-1]] = None
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["gpus"].append({"name": props.name, "capability": f"{props.major}.{props.minor}",
                                 "memory_gib": round(props.total_memory / 2**30, 1)})
    return info
