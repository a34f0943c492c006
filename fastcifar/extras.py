"""Optional packages: which extra of setup.cfg brings each, and the one install command every message names.

fastcifar is installed from its checkout (it is not published on a package index, so `pip install 'fastcifar[X]'`
finds nothing): a missing package's message names `pip install -e '.[X]'`, run in the checkout. ONNX Runtime comes
in two packages, `onnxruntime` (CPU) and `onnxruntime-gpu`, that install the same `onnxruntime` module and break each
other when both are installed, so the base install holds neither: the `cpu` or the `gpu` extra brings one, and
`make install` picks the gpu extra when `nvidia-smi -L` lists a GPU (Makefile, DEVICE_EXTRA).
"""

from __future__ import annotations

from fastcifar.errors import FastCifarError


def install_command(extra: str) -> str:
    """The command that installs `extra`: pip run in the fastcifar checkout (editable, like make install)."""
    return f"pip install -e '.[{extra}]' in the fastcifar checkout"


ONNXRUNTIME_INSTALL = f"{install_command('cpu')} ('.[gpu]' with an NVIDIA GPU; make install picks one)"
DALI_INSTALL = f"it comes with the gpu extra (Linux only): {install_command('gpu')}"


def _onnxruntime_problem() -> str | None:
    """None when ONNX Runtime imports here, else what is wrong and the fix, as a clause ("is not installed: ...").

    A real import, not a package lookup: a module left broken by installing both ONNX Runtime packages, or by
    removing one of them after the other was installed, is found but cannot be used."""
    try:
        import onnxruntime  # noqa: F401
    except (ImportError, OSError) as exc:
        if isinstance(exc, ImportError) and exc.name == "onnxruntime":
            return f"is not installed: {ONNXRUNTIME_INSTALL}"
        return (f"is installed but does not import ({exc}): pip uninstall -y onnxruntime onnxruntime-gpu, then "
                f"{ONNXRUNTIME_INSTALL}")
    return None


def onnxruntime_missing() -> str | None:
    """None when ONNX Runtime imports here, else why not and how to install it (one line)."""
    problem = _onnxruntime_problem()
    return f"ONNX Runtime {problem}" if problem else None


def require_onnxruntime(purpose: str, alternative: str | None = None):
    """The `onnxruntime` module, or one FastCifarError: `purpose` needs it, how to install it, and `alternative`
    (another way to go on without it) when there is one."""
    problem = _onnxruntime_problem()
    if problem:
        raise FastCifarError(f"{purpose} needs ONNX Runtime, which {problem}"
                             + (f"; or {alternative}" if alternative else ""))
    import onnxruntime

    return onnxruntime
