"""Shared fixtures: synthetic CIFAR-10 on disk, the real data when present, tiny saved models; marker skips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _real_cifar() -> Path:
    """The real CIFAR-10 of the `realdata` tests: $FASTCIFAR_DATA (.ci/run sets it), else ../shared/cifar10 beside
    the checkout (the development machines' copy; a fallback of the tests only, the product never looks there)."""
    candidates = [Path(p).expanduser() for p in (os.environ.get("FASTCIFAR_DATA"),) if p]
    candidates.append(Path(__file__).resolve().parents[1].parent / "shared" / "cifar10")
    return next((c for c in candidates if (c / "cifar-10-batches-py").is_dir()), candidates[0])


REAL_CIFAR = _real_cifar()
# Read once, then unset: the tests check what the verbs do with and without $FASTCIFAR_DATA themselves (they set it
# where they need it), and the real data must not become every verb's default under CI.
os.environ.pop("FASTCIFAR_DATA", None)


# The modules that run end-to-end work (trainings, exports, subprocesses, servers), longest first: seconds per module
# in one serial run on the 2-core CI machine (JUnit XML of `.ci/run`, 2026-11-28): train 95, gpu_check 91 (one 70 s
# fixture, so it goes first), compare 56, bench 53, export 50, datasets 50, serve 38, ...; ray ~210 and preemption ~50
# (2026-12-05, this AMD EPYC). `make test` runs modules on pytest-xdist workers one at a time in collection order
# (`--dist loadfile --no-loadscope-reorder`, Makefile), so these start first and the short modules fill in behind them. With xdist's own order (most tests first) the 5-test
# gpu_check module started last and one worker ran alone for its 90 s (411 s against 358 s; bench/README.md).
# test_gpu_machine_env.py goes first: it mostly waits on PyPI (a Python 3.12 environment with torch, built once and
# cached), so the other worker's CPU work fills its waits. Order only: no test depends on it.
LONGEST_FIRST = ("test_gpu_machine_env.py", "test_ray.py", "test_gpu_check.py", "test_train.py", "test_compare.py",
                 "test_bench.py", "test_preemption.py", "test_export.py", "test_datasets.py", "test_serve.py",
                 "test_records.py", "test_wheel.py", "test_docker_files.py", "test_levers.py", "test_inference.py",
                 "test_serving_precision.py", "test_sweep.py", "test_demo.py")


def pytest_collection_modifyitems(config, items):
    import importlib.util

    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: within a module, file order stays

    has_cuda = False
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        pass
    has_trt = importlib.util.find_spec("tensorrt") is not None and has_cuda
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_trt = pytest.mark.skip(reason="needs TensorRT and a CUDA GPU")
    skip_real = pytest.mark.skip(reason=f"real CIFAR-10 not found at {REAL_CIFAR}")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(skip_trt)
        if "realdata" in item.keywords and not (REAL_CIFAR / "cifar-10-batches-py").is_dir():
            item.add_marker(skip_real)


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    # 2-core CI machine: keep torch from oversubscribing when tests start subprocesses.
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """A data dir holding a small learnable synthetic CIFAR-10 (500 train / 200 test images)."""
    from fastcifar.data.synthetic import write_synthetic_cifar

    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_cifar(root, n_train=500, n_test=200, seed=0)
    return root


@pytest.fixture(scope="session")
def fake_weights(tmp_path_factory) -> Path:
    """A fabricated torchvision-format "ImageNet" state dict (the real one cannot be downloaded offline)."""
    import torch
    import torchvision

    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("weights") / "fake-resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def real_cifar() -> Path:
    if not (REAL_CIFAR / "cifar-10-batches-py").is_dir():
        pytest.skip(f"real CIFAR-10 not found at {REAL_CIFAR}")
    return REAL_CIFAR


def make_saved_model(out_dir: Path, *, arch="resnet18", stem="cifar", init="random", image_size=32, seed=0,
                     data_dir: Path | None = None) -> Path:
    """A run-dir-like folder with model.safetensors + model.json of an untrained model (no training)."""
    import torch

    from fastcifar.models import create_model, save_model

    torch.manual_seed(seed)
    model, spec = create_model(arch, init, stem, image_size=image_size)
    extra = {"data_dir": str(data_dir) if data_dir else None, "run_name": out_dir.name}
    save_model(model.eval(), spec, out_dir, metrics={"test_acc": 0.1}, extra=extra)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, synthetic_dir) -> Path:
    """A saved (untrained) resnet18 cifar-stem model directory for export/inference tests."""
    return make_saved_model(tmp_path_factory.mktemp("models") / "resnet18-random", data_dir=synthetic_dir)
