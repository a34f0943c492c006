"""The GPU check on a machine like the borrowed GPU machine, without a GPU: Python 3.12 holding only torch 2.11,
torchvision 0.26, numpy and the CPU onnxruntime 1.30, no package index. bench/gpu_wheels.py stages what the check
needs (under 60 MiB, with every dependency), the check's setup step installs it with no index, and the dry run
completes there.

The machine's packages are built once into a cached environment (~5 GB, ~1-2 min from PyPI; FASTCIFAR_GPU_ENV_CACHE
moves it) that is never modified: each test run overlays a fresh, empty Python 3.12 environment on it (a .pth
adds the cached site-packages below its own, as a --system-site-packages venv sees a system Python), so whatever
the check installs lands in the overlay and the next run starts from the machine's state again.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MACHINE = ("torch==2.11.0", "torchvision==0.26.0", "numpy", "onnxruntime==1.30.0")
CACHE = Path(os.environ.get("FASTCIFAR_GPU_ENV_CACHE", Path.home() / ".cache" / "fastcifar-tests")) / \
    "gpu-machine-py312-torch2.11"

pytestmark = pytest.mark.slow


def python312() -> str | None:
    """pyenv's 3.12 (its shim only answers when 3.12 is the active version), else one on PATH that runs."""
    candidates = sorted(glob.glob(str(Path.home() / ".pyenv" / "versions" / "3.12*" / "bin" / "python3.12")))
    candidates += [p for p in [shutil.which("python3.12")] if p]
    for candidate in candidates:
        if subprocess.run([candidate, "-c", "import venv, ensurepip"], capture_output=True).returncode == 0:
            return candidate
    return None


def site_packages(venv: Path) -> Path:
    return next(venv.glob("lib/python3.12/site-packages"))


@pytest.fixture(scope="module")
def machine_env() -> Path:
    """The cached Python 3.12 environment with the GPU machine's packages, built atomically when missing."""
    py = python312()
    if py is None:
        pytest.skip("no Python 3.12 on this machine (pyenv's 3.12 is what CI uses)")
    if not (CACHE / ".complete").is_file():
        building = CACHE.with_name(CACHE.name + f".building-{os.getpid()}")
        shutil.rmtree(building, ignore_errors=True)
        subprocess.run([py, "-m", "venv", str(building)], check=True, timeout=300)
        proc = subprocess.run([str(building / "bin" / "python"), "-m", "pip", "install", "-q",
                               "--disable-pip-version-check", *MACHINE], capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            shutil.rmtree(building, ignore_errors=True)
            pytest.fail(f"could not build the GPU-machine environment:\n{proc.stderr[-3000:]}")
        (building / ".complete").write_text(" ".join(MACHINE) + "\n")
        shutil.rmtree(CACHE, ignore_errors=True)
        os.replace(building, CACHE)
    return CACHE


@pytest.fixture()
def machine_python(machine_env, tmp_path) -> Path:
    """A fresh, empty Python 3.12 environment that sees the machine's packages and nothing of this project's."""
    venv = tmp_path / "machine"
    subprocess.run([python312(), "-m", "venv", str(venv)], check=True, timeout=300)
    # `import site; site.addsitedir(...)` in a .pth: the machine's site-packages, with its own .pth files, after ours.
    (site_packages(venv) / "gpu_machine.pth").write_text(
        f"import site; site.addsitedir({str(site_packages(machine_env))!r})\n")
    return venv / "bin" / "python"


def test_staged_wheels_install_with_no_index_and_the_dry_run_completes(machine_python, tmp_path, synthetic_dir):
    py = str(machine_python)
    probe = subprocess.run([py, "-c", "import torch, torchvision, numpy, onnxruntime; print(torch.__version__, "
                            "torchvision.__version__, onnxruntime.__version__)"], capture_output=True, text=True)
    assert probe.returncode == 0 and probe.stdout.startswith("2.11.0"), probe.stderr[-2000:]
    for module in ("click", "rich", "safetensors", "onnx", "matplotlib", "pytest"):  # as the GPU machine may be
        assert subprocess.run([py, "-c", f"import {module}"], capture_output=True).returncode != 0, module

    wheels = tmp_path / "wheels"
    staged = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_wheels.py"), "--out", str(wheels)],
                            capture_output=True, text=True, timeout=900)
    assert staged.returncode == 0, staged.stderr[-3000:]
    size = float(re.search(r": ([\d.]+) MiB", staged.stdout).group(1))
    print(staged.stdout)  # the size, for the record
    assert 1 < size < 60 and sum(p.stat().st_size for p in wheels.glob("*.whl")) < 60 * 2**20
    manifest = json.loads((wheels / "manifest.json").read_text())
    assert "torch" not in manifest["staged"] and "numpy" not in manifest["staged"]  # the machine has them

    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHON=py, OMP_WAIT_POLICY="PASSIVE", PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull,
               PATH=f"{machine_python.parent}:{env['PATH']}")
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run", str(synthetic_dir), str(out),
                           "--wheels", str(wheels), "--previous"], capture_output=True, text=True, env=env,
                          timeout=1800)
    setup = json.loads((out / "setup.json").read_text())
    assert setup["installed_with"] == "pip" and "click" in setup["missing_before"], setup
    assert set(setup["missing"]) <= {"nvidia.dali"}, setup  # DALI was not staged
    assert proc.returncode == 0, (out / "summary.md").read_text() + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [r["rc"] for r in rows] == [0] * 8
    env_record = json.loads((out / "env.json").read_text())
    assert env_record["python"].startswith("3.12") and env_record["torch"].startswith("2.11")
