"""The package as a user gets it: a wheel built from the source, installed in a fresh venv without the gpu extra.

fastcifar is not published on a package index, so what is checked is that it could be: the wheel's metadata keeps
ONNX Runtime and DALI out of the base install (the cpu / gpu extras bring them), `pip install --no-index` resolves
every dependency, and the installed `fastcifar` trains on the CPU from a folder that is not the checkout.

No download: the fresh venv sees this environment's packages (torch, ...) through a .pth file naming a view of its
site-packages - symlinks to every entry but fastcifar itself, ONNX Runtime and DALI - so pip's resolver finds them
installed, and what the wheel lacks cannot be borrowed from the checkout or this environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Top-level entries of site-packages the fresh venv must not see: fastcifar's own (an editable install's finder
# and .pth included) and the packages of the device extras.
HIDDEN_PREFIXES = ("fastcifar", "__editable__", "onnxruntime", "nvidia_dali")

pytestmark = pytest.mark.slow


def _run(cmd, *, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _source_copy(dest: Path) -> Path:
    """What setup.cfg builds from, copied: building in the checkout would leave build/ and a changed egg-info there."""
    dest.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "fastcifar", dest / "fastcifar", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _host_site_view(view: Path) -> list[Path]:
    """One folder per site-packages folder of this interpreter, holding symlinks to its entries minus the hidden."""
    sources = [Path(p) for p in dict.fromkeys((sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]))]
    folders = []
    for i, source in enumerate(sources):
        folder = view / str(i)
        folder.mkdir(parents=True)
        for entry in source.iterdir():
            if entry.name.lower().startswith(HIDDEN_PREFIXES) or entry.suffix == ".pth":
                continue
            if entry.name == "nvidia" and entry.is_dir():  # CUDA libraries torch loads, and DALI: keep the former
                (folder / "nvidia").mkdir()
                for child in entry.iterdir():
                    if child.name != "dali":
                        (folder / "nvidia" / child.name).symlink_to(child)
                continue
            (folder / entry.name).symlink_to(entry)
        folders.append(folder)
    return folders


def _requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def _name(requirement: str) -> str:
    return requirement.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("!")[0].strip()


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                  "-w", dist, _source_copy(root / "src")], cwd=root)
    assert build.returncode == 0, build.stdout + build.stderr
    shutil.rmtree(root / "src")
    wheels = list(dist.glob("fastcifar-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_the_wheel_keeps_onnx_runtime_and_dali_in_their_extras(built_wheel):
    requirements = _requirements(built_wheel)
    base = [r for r in requirements if "extra ==" not in r]
    assert {"torch", "torchvision", "onnx", "click"} <= {_name(r) for r in base}
    for requirement in requirements:
        name = _name(requirement)
        if name.startswith("onnxruntime") or name.startswith("nvidia-dali"):
            assert requirement not in base, f"{requirement} would be installed without an extra"
        if name == "onnxruntime-gpu":
            assert 'extra == "gpu"' in requirement, requirement
        if name == "onnxruntime":
            assert 'extra == "cpu"' in requirement, requirement
        if name.startswith("nvidia-dali"):  # DALI ships Linux wheels only
            assert 'platform_system == "Linux"' in requirement, requirement
    assert any(_name(r) == "onnxruntime-gpu" for r in requirements)
    assert any(_name(r) == "onnxruntime" for r in requirements)


def test_a_fresh_venv_from_the_wheel_without_the_gpu_extra_trains_on_the_cpu(built_wheel, tmp_path):
    from fastcifar.data.synthetic import write_synthetic_cifar

    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    try:
        # no pip of its own: ensurepip's would bring an old setuptools that shadows this environment's (torch
        # requires setuptools>=77), and this environment's pip, seen through the view, installs into the venv alike
        made = _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path, timeout=300)
        assert made.returncode == 0, made.stderr
        python, bindir = venv / "bin" / "python", venv / "bin"
        site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=work)
        (Path(site.stdout.strip()) / "fastcifar_test_host.pth").write_text(
            "".join(f"{folder}\n" for folder in _host_site_view(tmp_path / "view")))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
               and not k.startswith(("PIP_", "FASTCIFAR_"))}
        # PIP_CONFIG_FILE: a machine's pip.conf may name find-links folders, which --no-index still reads
        env.update(PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}", PIP_DISABLE_PIP_VERSION_CHECK="1",
                   PIP_CONFIG_FILE=os.devnull, VIRTUAL_ENV=str(venv))

        # dependency resolution included (no --no-deps): everything the wheel requires must be found installed
        install = _run([python, "-m", "pip", "install", "--no-index", built_wheel], cwd=work, env=env)
        assert install.returncode == 0, install.stdout + install.stderr

        where = _run([python, "-c", "import fastcifar, importlib.util as u; print(fastcifar.__file__); "
                      "print(u.find_spec('onnxruntime') is None)"], cwd=work, env=env)
        assert where.returncode == 0, where.stderr
        module_file, no_onnxruntime = where.stdout.split()
        assert Path(module_file).is_relative_to(venv) and not Path(module_file).is_relative_to(REPO), module_file
        assert no_onnxruntime == "True"  # the base install: no ONNX Runtime of either kind

        help_ = _run([bindir / "fastcifar", "--help"], cwd=work, env=env, timeout=120)
        assert help_.returncode == 0 and "train" in help_.stdout, help_.stderr

        write_synthetic_cifar(work / "data", n_train=60, n_test=20, seed=0)
        train = _run([bindir / "fastcifar", "train", "--data-dir", "data", "--out", "run", "--preset", "smoke",
                      "--device", "cpu", "--loader", "tensor", "--epochs", "1", "--batch-size", "16",
                      "--min-steps-per-epoch", "0", "--json"], cwd=work, env=env)
        assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-3000:]
        summary = json.loads((work / "run" / "summary.json").read_text())
        assert (summary["status"], summary["epochs"], summary["device"], summary["n_test"]) == ("finished", 1, "cpu",
                                                                                                20), summary
        assert (work / "run" / "model.safetensors").is_file()

        # what needs ONNX Runtime says how to get it, in one line, before any work
        export = _run([bindir / "fastcifar", "export", "run", "--data-dir", "data"], cwd=work, env=env)
        assert export.returncode == 1, export.stdout + export.stderr
        lines = export.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "pip install -e '.[cpu]'" in lines[0], lines
        assert not (work / "exported").exists()
    finally:  # a venv and a view of site-packages: nothing of them stays in pytest's kept temporary folders
        shutil.rmtree(venv, ignore_errors=True)
        shutil.rmtree(tmp_path / "view", ignore_errors=True)
