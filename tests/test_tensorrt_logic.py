"""The TensorRT module without TensorRT: profiles, version -> precision plans, sidecars, compatibility checks.

The `tensorrt`-marked tests at the end build and run real engines; they are skipped where TensorRT or a
CUDA GPU is missing (everything above them runs everywhere).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fastcifar.errors import FastCifarError
from fastcifar.export import export_onnx
from fastcifar.export import onnx as ox
from fastcifar.export import parity
from fastcifar.export import tensorrt as trtx
from fastcifar.fileio import write_json

H100 = {"tensorrt_version": "11.4.0.6", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def tiny_onnx(path, *, precision="fp16", initializer_type=TensorProto.FLOAT, metadata=True, qdq=False):
    """A small fastcifar-like graph: uint8 pixels [batch,32,32,3] -> Cast -> ReduceMean -> Mul(w) -> logits."""
    w = helper.make_tensor("w", initializer_type, [1], [2.0])
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2])
    nodes = [helper.make_node("Cast", ["pixels"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
             helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["m", "wf"], ["logits"])]
    if qdq:
        nodes.insert(0, helper.make_node("DequantizeLinear", ["w"], ["unused"]))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("pixels", TensorProto.UINT8,
                                                                            ["batch", 32, 32, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], [w, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    if metadata:
        ox.set_metadata(model, {"fastcifar.precision": precision, "fastcifar.input_kind": "raw",
                                "fastcifar.class_names": json.dumps(["a", "b", "c"]),
                                "fastcifar.mean": "[0.5, 0.5, 0.5]", "fastcifar.std": "[0.25, 0.25, 0.25]",
                                "fastcifar.image_size": "32"})
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("text,expected", [("1:256:1024", (1, 256, 1024)), ("8", (8, 8, 8)),
                                           (" 4:4:64 ", (4, 4, 64)), ("1:1:1", (1, 1, 1))])
def test_parse_profile(text, expected):
    profile = trtx.parse_profile(text)
    assert (profile.min, profile.opt, profile.max) == expected and str(profile) == ":".join(map(str, expected))


@pytest.mark.parametrize("text", ["0:1:2", "4:2:8", "1:16:8", "1:2", "a:b:c", "1:2:3:4", "", "-1:2:3"])
def test_parse_profile_rejects(text):
    with pytest.raises(FastCifarError, match="--batch"):
        trtx.parse_profile(text)


@pytest.mark.parametrize("version,precision,network_flags", [
    ("10.16.1.11", "fp32", ("STRONGLY_TYPED",)), ("10.16.1.11", "fp16", ("STRONGLY_TYPED",)),
    ("10.3.0", "bf16", ("STRONGLY_TYPED",)), ("10.16.1.11", "int8", ("STRONGLY_TYPED",)),
    ("11.4.0.6", "fp32", ()), ("11.4.0.6", "fp16", ()), ("11.0.0", "bf16", ()), ("11.4.0.6", "int8", ()),
    ("12.1.0", "fp16", ()),
])
def test_precision_plan_is_strongly_typed_on_both_majors(version, precision, network_flags):
    """No deprecated BuilderFlag.FP16/BF16/INT8: the graph's types carry the precision on 10 and 11 alike."""
    plan = trtx.precision_plan(version, precision)
    assert (plan.strongly_typed, plan.builder_flags, plan.precision) == (True, (), precision)
    assert plan.network_flags == network_flags and plan.trt_major == int(version.split(".")[0])


def test_network_flags_are_the_creation_flag_bits():
    class Flags:
        STRONGLY_TYPED = 1  # TensorRT 10's enum value

    fake_trt = type("trt", (), {"NetworkDefinitionCreationFlag": Flags})
    assert trtx.network_flags(fake_trt, trtx.precision_plan("10.16.1", "fp16")) == 2
    assert trtx.network_flags(fake_trt, trtx.precision_plan("11.4.0", "fp16")) == 0


def test_a_timing_cache_from_another_gpu_is_replaced_not_fatal(capsys):
    """set_timing_cache returns False on a mismatch: the build gets a fresh cache instead of none."""
    class Config:
        def __init__(self):
            self.caches = []

        def set_memory_pool_limit(self, pool, size):
            pass

        def create_timing_cache(self, data):
            return ("cache", data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.caches.append(cache)
            return cache[1] == b""  # the stale bytes are refused

        def add_optimization_profile(self, profile):
            pass

    class Shapes:
        def set_shape(self, *args):
            pass

    class Builder:
        config = Config()

        def create_builder_config(self):
            return self.config

        def create_optimization_profile(self):
            return Shapes()

    class Input:
        name, shape = "pixels", (-1, 32, 32, 3)

    network = type("Network", (), {"get_input": lambda self, i: Input()})()
    fake_trt = type("trt", (), {"MemoryPoolType": type("M", (), {"WORKSPACE": 0})})
    builder = Builder()
    config = trtx._builder_config(fake_trt, builder, network, trtx.precision_plan("11.4.0", "fp32"),
                                  trtx.parse_profile("1:8:16"), 1.0, b"stale bytes")
    assert config.caches == [("cache", b"stale bytes"), ("cache", b"")]
    assert "refused the timing cache" in capsys.readouterr().err


def test_precision_plan_rejects_old_versions_and_unknown_precisions():
    with pytest.raises(FastCifarError, match="TensorRT 10 or 11.*pypi.nvidia.com"):
        trtx.precision_plan("8.6.1", "fp16")
    with pytest.raises(FastCifarError, match="unknown precision"):
        trtx.precision_plan("11.4.0", "fp8")
    with pytest.raises(FastCifarError, match="unrecognised TensorRT version"):
        trtx.trt_major("eleven")


def test_missing_tensorrt_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    assert trtx.trt_version() is None
    with pytest.raises(FastCifarError) as info:
        trtx.require_tensorrt()
    message = str(info.value)
    assert "pip install --extra-index-url https://pypi.nvidia.com -e '.[trt]'" in message
    assert "Docker" in message
    assert trtx.current_environment()["tensorrt_version"] is None


def test_missing_requirements_lists_each_gap():
    assert trtx.missing_requirements(H100) == []
    gaps = trtx.missing_requirements({"tensorrt_version": None, "gpu_name": None, "compute_capability": None})
    assert len(gaps) == 2 and "pypi.nvidia.com" in gaps[0] and "GPU" in gaps[1]


def test_onnx_precision_from_metadata_or_tensors(tmp_path):
    assert trtx.onnx_precision(tiny_onnx(tmp_path / "a.onnx", precision="bf16")) == "bf16"
    foreign = dict(metadata=False)
    assert trtx.onnx_precision(tiny_onnx(tmp_path / "b.onnx", **foreign)) == "fp32"
    fp16 = tiny_onnx(tmp_path / "c.onnx", initializer_type=TensorProto.FLOAT16, **foreign)
    assert trtx.onnx_precision(fp16) == "fp16"
    assert trtx.onnx_precision(tiny_onnx(tmp_path / "d.onnx", qdq=True, **foreign)) == "int8"


def make_sidecar(tmp_path, env=H100, precision="fp16"):
    onnx_path = tiny_onnx(tmp_path / "m.onnx", precision=precision)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"serialized engine bytes")
    sidecar = trtx.engine_sidecar(onnx_path, engine.read_bytes(), env=env,
                                  plan=trtx.precision_plan(env["tensorrt_version"], precision),
                                  profile=trtx.parse_profile("1:256:1024"), workspace_gib=4.0,
                                  timing_cache=tmp_path / "t.cache", build_seconds=12.3)
    write_json(trtx.sidecar_path(engine), sidecar)
    return engine, onnx_path


def test_sidecar_records_what_a_consumer_needs(tmp_path):
    engine, onnx_path = make_sidecar(tmp_path)
    assert trtx.sidecar_path(engine).name == "m.engine.json"
    s = trtx.read_engine_sidecar(engine)
    assert (s["tensorrt_version"], s["gpu_name"], s["compute_capability"]) == tuple(H100.values())
    assert (s["precision"], s["strongly_typed"], s["builder_flags"]) == ("fp16", True, [])
    assert s["network_flags"] == ([] if trtx.trt_major(s["tensorrt_version"]) >= 11 else ["STRONGLY_TYPED"])
    assert s["profile"] == {"min": 1, "opt": 256, "max": 1024}
    assert s["input"] == {"name": "pixels", "shape": [-1, 32, 32, 3], "dtype": "uint8"}
    assert s["output"] == {"name": "logits", "shape": [-1, 3], "dtype": "float32"}
    assert s["source_onnx_sha256"] == ox.sha256_file(onnx_path) and s["source_onnx"] == str(onnx_path.resolve())
    assert s["metadata"]["class_names"] == ["a", "b", "c"] and s["metadata"]["mean"] == [0.5, 0.5, 0.5]
    assert s["engine_sha256"] == hashlib.sha256(engine.read_bytes()).hexdigest()


def test_sidecar_problems_are_clear(tmp_path):
    engine = tmp_path / "x.engine"
    with pytest.raises(FastCifarError, match="no sidecar x.engine.json.*fastcifar export"):
        trtx.read_engine_sidecar(engine)
    trtx.sidecar_path(engine).write_text("{not json")
    with pytest.raises(FastCifarError, match="not JSON"):
        trtx.read_engine_sidecar(engine)
    trtx.sidecar_path(engine).write_text(json.dumps({"format_version": 99}))
    with pytest.raises(FastCifarError, match="not a fastcifar engine sidecar"):
        trtx.read_engine_sidecar(engine)


def test_compatibility_checks(tmp_path):
    engine, onnx_path = make_sidecar(tmp_path)
    sidecar = trtx.read_engine_sidecar(engine)
    assert trtx.check_engine_compatible(sidecar, dict(H100)) == []
    rebuild = f"fastcifar export {onnx_path.resolve()} --trt --batch 1:256:1024 --workspace-gib 4.0"
    for change in ({"tensorrt_version": "10.16.1.11"}, {"compute_capability": "8.9", "gpu_name": "NVIDIA L4"}):
        with pytest.raises(FastCifarError) as info:
            trtx.check_engine_compatible(sidecar, {**H100, **change})
        assert "built with TensorRT 11.4.0.6 on NVIDIA H100" in str(info.value) and rebuild in str(info.value)
    (warning,) = trtx.check_engine_compatible(sidecar, {**H100, "gpu_name": "NVIDIA H100 PCIe"})
    assert "same compute capability" in warning and rebuild in warning
    for missing, message in (({"tensorrt_version": None}, "pypi.nvidia.com"), ({"gpu_name": None}, "no CUDA GPU")):
        with pytest.raises(FastCifarError, match=message):
            trtx.check_engine_compatible(sidecar, {**H100, **missing})


def test_load_engine_refuses_an_engine_that_does_not_match_its_sidecar(tmp_path, monkeypatch):
    engine, _ = make_sidecar(tmp_path)
    monkeypatch.setattr(trtx, "current_environment", lambda: dict(H100))
    engine.write_bytes(b"another engine")
    with pytest.raises(FastCifarError, match="does not match its sidecar.*Rebuild: fastcifar export"):
        trtx.load_engine(engine)


def test_build_engine_without_tensorrt_or_gpu(tmp_path, monkeypatch):
    onnx_path = tiny_onnx(tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(FastCifarError) as info:
        trtx.build_engine(onnx_path, batch="1:8:64")
    message = str(info.value)
    assert message.startswith("--trt: no TensorRT engine built: TensorRT is not installed")
    assert "pypi.nvidia.com" in message and f"fastcifar export {onnx_path} --trt --batch 1:8:64" in message
    assert not (tmp_path / "m.engine").exists()
    with pytest.raises(FastCifarError, match="--batch"):
        trtx.build_engine(onnx_path, batch="64:8:1")
    with pytest.raises(FastCifarError, match="does not exist"):
        trtx.build_engine(tmp_path / "missing.onnx")


def test_default_timing_cache_is_per_version_and_gpu(tmp_path):
    assert trtx.default_timing_cache(tmp_path, H100) == tmp_path / "trt-timing-11.4.0.6-sm90.cache"


def test_importable_without_tensorrt(monkeypatch):
    """serve/predictor.py and the CLI import this module on machines without TensorRT."""
    import importlib

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    module = importlib.reload(trtx)
    assert module.parse_profile("2").opt == 2


# ---------------------------------------------------------------------------------------------- on a GPU


@pytest.fixture(scope="module")
def engines(tiny_model_dir, tmp_path_factory):
    """fp32 / fp16 / int8 engines of the tiny model, with their ONNX files."""
    from fastcifar.export.quantize import quantize_int8

    out = tmp_path_factory.mktemp("trt")
    built = {}
    for precision in ("fp32", "fp16"):
        onnx_path = export_onnx(tiny_model_dir, out, precision=precision, max_images=64).path
        built[precision] = (onnx_path, trtx.build_engine(onnx_path, batch="1:32:64", workspace_gib=2))
    int8 = quantize_int8(built["fp32"][0], tiny_model_dir, n_images=64, verify=False).path
    built["int8"] = (int8, trtx.build_engine(int8, batch="1:32:64", workspace_gib=2))
    return built


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision,atol", [("fp32", 1e-2), ("fp16", 5e-2), ("int8", None)])
def test_engine_matches_onnxruntime(engines, synthetic_dir, precision, atol):
    import torch

    from fastcifar.data.cifar import load_cifar10
    from fastcifar.serve.trt_runner import EngineRunner

    onnx_path, engine_path = engines[precision]
    engine, sidecar, warnings = trtx.load_engine(engine_path)
    assert warnings == [] and sidecar["precision"] == precision
    assert sidecar["gpu_name"] == torch.cuda.get_device_name() and sidecar["profile"]["max"] == 64
    assert sidecar["tensorrt_version"] == trtx.trt_version()
    assert sidecar["strongly_typed"] and sidecar["builder_flags"] == []
    assert sidecar["timing_cache"] and Path(sidecar["timing_cache"]).is_file()
    images = load_cifar10(synthetic_dir, download=False).test.images[:37]
    want = parity.make_ort_session(onnx_path, ["CPUExecutionProvider"]).run(None, {"pixels": images})[0]
    got = EngineRunner(engine)(torch.from_numpy(images).cuda())
    torch.cuda.synchronize()
    got = got.float().cpu().numpy()
    assert got.shape == (37, 10)
    if atol is not None:
        np.testing.assert_allclose(got, want, atol=atol)
    else:  # int8: TensorRT's kernels round differently from ONNX Runtime's; the logits must still track
        assert np.abs(got - want).mean() < 0.1 * max(1.0, np.abs(want).max())


@pytest.mark.tensorrt
def test_engine_from_another_tensorrt_is_refused_with_the_rebuild_command(engines, monkeypatch):
    _, engine_path = engines["fp32"]
    real = trtx.current_environment()
    monkeypatch.setattr(trtx, "current_environment", lambda: {**real, "tensorrt_version": "0.0.0"})
    with pytest.raises(FastCifarError, match="Rebuild it here: fastcifar export .* --trt --batch 1:32:64"):
        trtx.load_engine(engine_path)
