"""Serving precision (fp32 / bf16 / fp16 PyTorch backends) and backends that degrade with a reason, never crash."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fastcifar.cli import cli
from fastcifar.errors import FastCifarError


@pytest.fixture(scope="module")
def onnx_file(tiny_model_dir, tmp_path_factory):
    from fastcifar.export import export_onnx

    return export_onnx(tiny_model_dir, tmp_path_factory.mktemp("onnx") / "tiny.onnx", verify=False).path


@pytest.fixture(scope="module")
def pixels():
    from fastcifar.data.synthetic import make_images

    return make_images(np.arange(16) % 10, np.random.default_rng(3))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_torch_backends_run_on_the_cpu_close_to_fp32(tiny_model_dir, pixels, precision):
    from fastcifar.serve.predictor import load_predictor

    fp32 = load_predictor(tiny_model_dir, "torch", "cpu")
    low = load_predictor(tiny_model_dir, "torch", "cpu", precision=precision)
    assert (fp32.precision, low.precision) == ("fp32", precision) and low.describe()["precision"] == precision
    a, b = fp32.logits(pixels), low.logits(pixels)
    assert b.dtype == np.float32  # consumers always get float32 logits
    scale = np.abs(a).max()
    assert 0 < np.abs(a - b).max() < 0.1 * scale  # really computed in the smaller type, and close to fp32


def test_defaults_and_refusals():
    from fastcifar.serve.predictor import default_precision, resolve_precision

    assert default_precision("cpu") == "fp32" and default_precision("cuda") == "bf16"
    assert resolve_precision("torch-compiled", None, "cuda") == "bf16"
    assert resolve_precision("onnxruntime", None, "cuda") is None  # an exported file carries its own
    with pytest.raises(FastCifarError, match="exported with"):
        resolve_precision("onnxruntime", "bf16", "cpu")
    with pytest.raises(FastCifarError, match="unknown precision"):
        resolve_precision("torch", "int4", "cpu")


def test_an_unusable_backend_is_refused_before_any_work(tiny_model_dir, monkeypatch, tmp_path):
    from fastcifar.serve import predictor

    monkeypatch.setitem(predictor._AVAILABILITY, "onnxruntime", lambda device_type: "ONNX Runtime is not installed")
    with pytest.raises(FastCifarError, match="onnxruntime backend cannot run here: ONNX Runtime is not installed"):
        predictor.load_predictor(tiny_model_dir, "onnxruntime", "cpu", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # refused before exporting anything


# ---------------------------------------------------------------------------------------------- ONNX Runtime


def test_ort_providers_degrade_to_cpu_with_the_fix():
    from fastcifar.serve.ort_runner import ort_providers

    gpu = torch.device("cuda", 1)
    providers, note = ort_providers(gpu, available=["CPUExecutionProvider"], packages={"onnxruntime"})
    assert providers == ["CPUExecutionProvider"]
    assert "CPU provider" in note and "only the CPU package" in note and "pip install -e '.[gpu]'" in note
    _, both = ort_providers(gpu, available=["CPUExecutionProvider"], packages={"onnxruntime", "onnxruntime-gpu"})
    assert "both installed" in both and "pip uninstall -y onnxruntime onnxruntime-gpu" in both
    providers, note = ort_providers(gpu, available=["CUDAExecutionProvider", "CPUExecutionProvider"],
                                    tensorrt_version=None)
    assert note is None and providers == [("CUDAExecutionProvider", {"device_id": "1"}), "CPUExecutionProvider"]
    assert ort_providers(torch.device("cpu")) == (["CPUExecutionProvider"], None)


def test_ort_without_a_cuda_provider_runs_on_the_cpu_and_says_so(onnx_file, pixels, monkeypatch):
    """A CUDA machine whose ONNX Runtime is the CPU package: inputs stay on the host, the note says why."""
    from fastcifar.serve import ort_runner

    note = ort_runner.no_cuda_provider_note({"onnxruntime"})
    monkeypatch.setattr(ort_runner, "ort_providers", lambda device: (["CPUExecutionProvider"], note))
    predictor = ort_runner.OnnxRuntimePredictor(onnx_file, torch.device("cuda", 0))
    assert predictor.device == "cpu" and predictor.timing == "wall" and isinstance(predictor.io, ort_runner._OrtCpuIO)
    described = predictor.describe()
    assert described["provider"] == "CPUExecutionProvider" and described["note"] == note
    assert predictor.predict(pixels).shape == (16, 10)


def test_bench_row_carries_provider_note_and_precision():
    from fastcifar.bench.measure import _row_from_result

    result = {"throughput": {"1": 10.0}, "throughput_h2d": {"1": None}, "latency_ms": None,
              "predictor": {"provider": "CPUExecutionProvider", "note": "ran on ONNX Runtime's CPU provider",
                            "precision": "fp32", "device": "cpu"}}
    row = _row_from_result("m", "onnxruntime", "cuda:0", "m.onnx", result)
    assert (row["status"], row["device"], row["provider"], row["precision"]) == ("ok", "cpu", "CPUExecutionProvider",
                                                                                 "fp32")
    assert row["note"].startswith("ran on ONNX Runtime's CPU provider") and row["label"] == "onnxruntime"


# ---------------------------------------------------------------------------------------------- CLI


def test_bench_sets_precisions_side_by_side_against_the_fp32_reference(tiny_model_dir, synthetic_dir, tmp_path):
    result = CliRunner().invoke(cli, [
        "bench", str(tiny_model_dir), "--backends", "torch,torch:bf16,onnxruntime", "--device", "cpu",
        "--data-dir", str(synthetic_dir), "--no-download", "--batch-sizes", "1,8", "--min-time", "0.05",
        "--warmup", "0.02", "--latency-iters", "3", "--max-images", "64", "--results-dir", str(tmp_path / "r"),
        "--cache-dir", str(tmp_path / "cache"), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["label"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"torch", "torch:bf16", "onnxruntime"}
    assert rows["torch"]["precision"] == "fp32" and rows["torch:bf16"]["precision"] == "bf16"
    assert rows["torch"]["agreement"] == 1.0 and rows["torch"]["max_abs_diff"] == 0.0  # it is the reference
    bf16 = rows["torch:bf16"]
    assert 0 <= bf16["agreement"] <= 1 and bf16["max_abs_diff"] > 0 and bf16["accuracy_drop"] is not None
    assert rows["onnxruntime"]["provider"] == "CPUExecutionProvider"
    md = next((tmp_path / "r").glob("*.md")).read_text()
    assert "torch bf16" in md and "torch fp32" in md


@pytest.mark.parametrize("backends, message", [
    ("onnxruntime:bf16", "only torch and torch-compiled take a precision"),
    ("torch:int4", "unknown precision in 'torch:int4'"),
    ("pytorch", "unknown backend 'pytorch'"),
])
def test_bad_backend_specs_are_one_message(backends, message, tiny_model_dir, tmp_path):
    result = CliRunner().invoke(cli, ["bench", str(tiny_model_dir), "--backends", backends, "--device",
                                      "cpu", "--results-dir", str(tmp_path / "r")])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_predict_with_bf16_says_what_ran(tiny_model_dir, tmp_path):
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / "a.png")
    result = CliRunner().invoke(cli, ["predict", str(tiny_model_dir), str(tmp_path / "a.png"),
                                      "--device", "cpu", "--precision", "bf16", "--json"])
    assert result.exit_code == 0, result.output
    [item] = json.loads(result.stdout)
    assert (item["backend"], item["precision"]) == ("torch", "bf16") and len(item["top"]) == 3
    refused = CliRunner().invoke(cli, ["predict", str(tiny_model_dir), str(tmp_path / "a.png"),
                                       "--backend", "onnxruntime", "--precision", "bf16"])
    assert refused.exit_code == 1 and "exported with" in refused.output and "Traceback" not in refused.output


ALL_EPS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_ort_tensorrt_provider_only_when_the_major_versions_match(tmp_path):
    from fastcifar.serve.ort_runner import ort_providers, ort_tensorrt_major

    gpu = torch.device("cuda", 0)
    providers, note = ort_providers(gpu, available=ALL_EPS, tensorrt_version="10.16.1.11", built_major=10)
    assert providers[0][0] == "TensorrtExecutionProvider" and providers[0][1]["device_id"] == "0" and note is None
    providers, note = ort_providers(gpu, available=ALL_EPS, tensorrt_version="11.4.0.106", built_major=10)
    assert [p[0] if isinstance(p, tuple) else p for p in providers] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert "built against TensorRT 10" in note and "11.4.0.106" in note
    providers, note = ort_providers(gpu, available=ALL_EPS, tensorrt_version=None, built_major=10)
    assert providers[0][0] == "CUDAExecutionProvider" and note is None  # no TensorRT: nothing to explain
    (tmp_path / "libonnxruntime_providers_tensorrt.so").write_bytes(b"\x7fELF...libnvinfer.so.10\x00...")
    assert ort_tensorrt_major(tmp_path) == 10 and ort_tensorrt_major(tmp_path / "none") is None


def test_a_provider_that_cannot_start_is_dropped_with_its_options_kept():
    """onnxruntime's own fallback would recreate the session with default providers and no device_id."""
    from fastcifar.serve.ort_runner import create_session

    made = []

    class Session:
        def __init__(self, path, options, providers):
            made.append(providers)
            self.providers = [p[0] if isinstance(p, tuple) else p for p in providers
                              if (p[0] if isinstance(p, tuple) else p) != "TensorrtExecutionProvider"]
            self.fallback = True

        def get_providers(self):
            return self.providers

        def disable_fallback(self):
            self.fallback = False

    fake_ort = type("ort", (), {"InferenceSession": Session})
    asked = [("TensorrtExecutionProvider", {"device_id": "1"}), ("CUDAExecutionProvider", {"device_id": "1"}),
             "CPUExecutionProvider"]
    session, note = create_session(fake_ort, "m.onnx", None, asked)
    assert made == [asked, asked[1:]]  # made again from what was asked, the CUDA options intact
    assert not session.fallback and "TensorrtExecutionProvider could not start" in note
    assert "ran on CUDAExecutionProvider" in note
    made.clear()
    session, note = create_session(fake_ort, "m.onnx", None, asked[1:])
    assert made == [asked[1:]] and note is None and not session.fallback
