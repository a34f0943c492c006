"""A missing optional package (ONNX Runtime, DALI, an extra's packages) is one `Error:` line naming the command that
installs it from the checkout - fastcifar is not on a package index, so `pip install 'fastcifar[X]'` finds nothing."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from click.testing import CliRunner

from fastcifar.cli import cli
from fastcifar.errors import FastCifarError


@pytest.fixture
def no_onnxruntime(monkeypatch):
    """As if neither ONNX Runtime package were installed (`import onnxruntime` raises ModuleNotFoundError)."""
    for name in [m for m in sys.modules if m == "onnxruntime" or m.startswith("onnxruntime.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)


def _one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, result.output
    return lines[0]


def test_export_without_onnx_runtime_says_how_to_install_it_before_any_work(no_onnxruntime, tiny_model_dir,
                                                                            synthetic_dir, tmp_path):
    out = tmp_path / "exported"
    line = _one_error_line(CliRunner().invoke(cli, ["export", str(tiny_model_dir), "--data-dir", str(synthetic_dir),
                                                    "--out", str(out)]))
    assert "export's parity check needs ONNX Runtime, which is not installed" in line
    assert "pip install -e '.[cpu]' in the fastcifar checkout" in line and "'.[gpu]'" in line
    assert "--no-verify" in line
    assert not out.exists()  # refused before the ONNX export wrote anything


def test_the_onnxruntime_backend_without_onnx_runtime_is_refused_with_the_install_command(no_onnxruntime,
                                                                                          tiny_model_dir, tmp_path):
    from fastcifar.serve.predictor import backend_unavailable, load_predictor

    assert "pip install -e '.[cpu]'" in backend_unavailable("onnxruntime", "cpu")
    with pytest.raises(FastCifarError, match=r"onnxruntime backend cannot run here: ONNX Runtime is not installed"):
        load_predictor(tiny_model_dir, "onnxruntime", "cpu", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_onnx_runtime_that_does_not_import_is_told_apart_from_a_missing_one(monkeypatch):
    """Both ONNX Runtime packages installed (or one removed after the other) leave a module that fails to import."""
    import builtins

    from fastcifar.extras import onnxruntime_missing, require_onnxruntime

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("cannot import name 'InferenceSession'", name="onnxruntime.capi")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    assert onnxruntime_missing().startswith("ONNX Runtime is installed but does not import")
    with pytest.raises(FastCifarError, match="pip uninstall -y onnxruntime onnxruntime-gpu, then pip install -e"):
        require_onnxruntime("the test")


def test_dali_loaders_without_dali_name_the_gpu_extra(monkeypatch):
    from fastcifar.data import loaders
    from fastcifar.data.dali_files import DaliFileLoader
    from fastcifar.data.loader_contract import LoaderOptions

    monkeypatch.setattr(loaders, "dali_available", lambda: False)
    options = LoaderOptions(batch_size=4, train=True)
    with pytest.raises(FastCifarError, match=r"--loader dali needs NVIDIA DALI.*pip install -e '\.\[gpu\]'.*tensor"):
        loaders.make_loader(np.zeros((8, 32, 32, 3), np.uint8), np.arange(8) % 10, options, kind="dali")
    with pytest.raises(FastCifarError, match=r"--loader dali-files needs NVIDIA DALI.*pip install -e '\.\[gpu\]'"):
        DaliFileLoader(["a.jpg"], np.zeros(1, np.int64), options)
