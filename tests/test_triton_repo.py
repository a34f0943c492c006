"""`fastcifar export --triton-repo`: the Triton model repository, each config.pbtxt parsed as Triton's ModelConfig.

Every generated config.pbtxt goes through tritonclient's model_config_pb2 + text_format.Parse (a misspelled field or a
bad value fails the parse) and is checked against the ONNX graph it serves (onnx.load: names, element types, dims).
The TensorRT entry comes from a fake engine + sidecar (no TensorRT here): `build_engine` is replaced by one that
writes bytes and a real sidecar (tensorrt.engine_sidecar) for an H100 with TensorRT 11. Not run here: a Triton
server (no Docker engine, no GPU).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from google.protobuf import text_format
from onnx import TensorProto
from tritonclient.grpc import model_config_pb2 as mc

from conftest import make_saved_model
from fastcifar.cli import cli
from fastcifar.errors import FastCifarError
from fastcifar.export import parity
from fastcifar.export import tensorrt as trtx
from fastcifar.export import triton
from fastcifar.fileio import file_digest, write_json
from fastcifar.precision import DEFAULT_ENGINE_PROFILE

H100 = {"tensorrt_version": "11.4.0.6", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
TRITON_TYPE = {TensorProto.UINT8: mc.TYPE_UINT8, TensorProto.FLOAT: mc.TYPE_FP32}
NAME = "resnet18-random"  # tiny_model_dir's run name


def invoke(*args):
    return CliRunner().invoke(cli, ["export", *map(str, args)])


def parse_config(entry_dir: Path):
    """config.pbtxt -> ModelConfig (text_format raises on any field Triton's schema does not have)."""
    return text_format.Parse((entry_dir / "config.pbtxt").read_text(), mc.ModelConfig())


def params(config) -> dict:
    return {key: value.string_value for key, value in config.parameters.items()}


def check_io_against_graph(config, onnx_path: Path):
    """The config's input/output: the graph's own names, element types and dims (batch dimension left out)."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    for declared, actual in ((config.input, graph.input), (config.output, graph.output)):
        assert len(declared) == len(actual) == 1
        tensor = actual[0].type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        assert dims[0] == -1  # the dynamic batch dimension Triton batches along
        assert declared[0].name == actual[0].name
        assert declared[0].data_type == TRITON_TYPE[tensor.elem_type]
        assert list(declared[0].dims) == dims[1:]


def fake_build_engine(onnx_path, engine_path=None, *, batch=DEFAULT_ENGINE_PROFILE, workspace_gib=4.0, **kwargs):
    """What build_engine leaves behind on a GPU: the plan bytes and the sidecar describing them."""
    onnx_path = Path(onnx_path)
    engine = Path(engine_path) if engine_path else onnx_path.with_suffix(".engine")
    data = b"fake TensorRT plan of " + onnx_path.name.encode()
    engine.write_bytes(data)
    sidecar = trtx.engine_sidecar(onnx_path, data, env=H100,
                                  plan=trtx.precision_plan(H100["tensorrt_version"], trtx.onnx_precision(onnx_path)),
                                  profile=trtx.parse_profile(batch), workspace_gib=workspace_gib, timing_cache=None,
                                  build_seconds=1.0)
    write_json(trtx.sidecar_path(engine), sidecar)
    return engine


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    """One CLI export of the tiny model with --triton-repo (fp32, raw input, defaults)."""
    root = tmp_path_factory.mktemp("triton")
    out, repo = root / "exported", root / "repo"
    result = invoke(tiny_model_dir, "--out", out, "--verify-images", 16, "--triton-repo", repo, "--json")
    assert result.exit_code == 0, result.output
    return {"out": out, "repo": repo, "summary": json.loads(result.stdout), "stderr": result.stderr}


def test_onnx_entry_layout_and_config(exported, tiny_model_dir):
    repo, onnx_file = exported["repo"], exported["out"] / f"{NAME}.onnx"
    entry = repo / f"{NAME}_onnx"
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*")) == [
        entry.name, f"{entry.name}/1", f"{entry.name}/1/model.onnx", f"{entry.name}/config.pbtxt",
        f"{entry.name}/labels.txt"]
    assert (entry / "1" / "model.onnx").read_bytes() == onnx_file.read_bytes()
    config = parse_config(entry)
    assert (config.name, config.platform, config.max_batch_size) == (entry.name, "onnxruntime_onnx", 1024)
    check_io_against_graph(config, entry / "1" / "model.onnx")
    (inp,), (out,) = config.input, config.output
    assert (inp.name, list(inp.dims), inp.format) == ("pixels", [32, 32, 3], mc.ModelInput.FORMAT_NHWC)
    assert (out.name, list(out.dims), out.label_filename) == ("logits", [10], "labels.txt")
    assert list(config.dynamic_batching.preferred_batch_size) == [256]
    assert config.dynamic_batching.max_queue_delay_microseconds == triton.MAX_QUEUE_DELAY_US
    (group,) = config.instance_group
    assert (group.count, group.kind) == (1, mc.ModelInstanceGroup.KIND_GPU)
    p = params(config)
    meta = onnx.load(str(onnx_file), load_external_data=False).metadata_props
    class_names = json.loads({m.key: m.value for m in meta}["fastcifar.class_names"])
    assert json.loads(p["fastcifar.class_names"]) == class_names and len(class_names) == 10
    assert (entry / "labels.txt").read_text().splitlines() == class_names
    assert (p["fastcifar.input_kind"], p["fastcifar.precision"], p["fastcifar.image_size"]) == ("raw", "fp32", "32")
    assert json.loads(p["fastcifar.mean"]) == pytest.approx([0.4914, 0.4822, 0.4465])
    assert len(json.loads(p["fastcifar.std"])) == 3 and "uint8" in p["fastcifar.preprocessing"]
    assert p["fastcifar.source_onnx_sha256"] == file_digest(onnx_file)
    assert p["fastcifar.source_weights_sha256"] == file_digest(tiny_model_dir / "model.safetensors")
    # the summary and the terminal name the entry
    (listed,) = exported["summary"]["triton"]
    assert listed["name"] == entry.name and listed["platform"] == "onnxruntime_onnx"
    assert "writing the Triton model repository" in exported["stderr"]


def test_the_repository_model_runs_like_the_exported_file(exported):
    """1/model.onnx takes a uint8 NHWC batch in ONNX Runtime and gives the exported file's logits."""
    pixels = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    served = parity.make_ort_session(exported["repo"] / f"{NAME}_onnx" / "1" / "model.onnx", ["CPUExecutionProvider"])
    original = parity.make_ort_session(exported["out"] / f"{NAME}.onnx", ["CPUExecutionProvider"])
    (logits,) = served.run(["logits"], {"pixels": pixels})
    (expected,) = original.run(["logits"], {"pixels": pixels})
    assert logits.shape == (5, 10) and logits.dtype == np.float32
    np.testing.assert_array_equal(logits, expected)


def test_normalized_input_cpu_kind_and_max_batch(tiny_model_dir, exported, tmp_path):
    """--input normalized: the config declares the graph's float32 NCHW input; the Triton options apply."""
    repo = tmp_path / "repo"
    result = invoke(tiny_model_dir, "--out", exported["out"], "--input", "normalized", "--no-verify",
                    "--triton-repo", repo, "--triton-max-batch", 64, "--triton-instance-kind", "cpu")
    assert result.exit_code == 0, result.output
    entry = repo / f"{NAME}-normalized_onnx"
    config = parse_config(entry)
    check_io_against_graph(config, entry / "1" / "model.onnx")
    (inp,) = config.input
    assert (inp.name, inp.data_type, list(inp.dims), inp.format) == (
        "images", mc.TYPE_FP32, [3, 32, 32], mc.ModelInput.FORMAT_NCHW)
    assert config.max_batch_size == 64 and list(config.dynamic_batching.preferred_batch_size) == [64]
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    p = params(config)
    assert p["fastcifar.input_kind"] == "normalized" and "float32 NCHW" in p["fastcifar.preprocessing"]
    session = parity.make_ort_session(entry / "1" / "model.onnx", ["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": np.zeros((3, 3, 32, 32), np.float32)})
    assert logits.shape == (3, 10)
    assert f"triton: {entry}" in result.stdout and "docker run --gpus all" in result.stdout


def test_trt_entry_from_a_fake_engine(tiny_model_dir, exported, tmp_path, monkeypatch):
    """--no-onnx --trt: the ONNX entry of the file it continued from, and the plan's entry from its sidecar."""
    monkeypatch.setattr(trtx, "build_engine", fake_build_engine)
    repo = tmp_path / "repo"
    result = invoke(tiny_model_dir, "--out", exported["out"], "--no-onnx", "--trt", "--batch", "1:64:512",
                    "--triton-repo", repo, "--json")
    assert result.exit_code == 0, result.output
    assert sorted(e["name"] for e in json.loads(result.stdout)["triton"]) == [f"{NAME}_onnx", f"{NAME}_trt"]
    engine = exported["out"] / f"{NAME}.engine"
    entry = repo / f"{NAME}_trt"
    assert (entry / "1" / "model.plan").read_bytes() == engine.read_bytes()
    config = parse_config(entry)
    assert (config.name, config.platform, config.max_batch_size) == (entry.name, "tensorrt_plan", 512)
    check_io_against_graph(config, exported["out"] / f"{NAME}.onnx")  # the graph the plan was built from
    assert list(config.dynamic_batching.preferred_batch_size) == [64]  # the profile's OPT
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    p = params(config)
    assert (p["fastcifar.tensorrt_version"], p["fastcifar.profile"], p["fastcifar.precision"]) == (
        "11.4.0.6", "1:64:512", "fp32")
    assert p["fastcifar.compute_capability"] == "9.0" and p["fastcifar.gpu_name"] == H100["gpu_name"]
    assert len(json.loads(p["fastcifar.class_names"])) == 10
    assert (entry / "labels.txt").read_text().splitlines() == json.loads(p["fastcifar.class_names"])
    assert "TensorRT must be 11.4.0.6" in (entry / "config.pbtxt").read_text()
    assert parse_config(repo / f"{NAME}_onnx").max_batch_size == 1024


def test_trt_config_defaults_to_the_profile_max(tmp_path, exported):
    """A sidecar with the default profile: max_batch_size = its MAX; a larger request or MIN > 1 is refused."""
    engine = fake_build_engine(exported["out"] / f"{NAME}.onnx", tmp_path / "m.engine")
    sidecar = trtx.read_engine_sidecar(engine)
    config = text_format.Parse(triton.trt_config(sidecar, "m_trt"), mc.ModelConfig())
    assert config.max_batch_size == trtx.parse_profile(DEFAULT_ENGINE_PROFILE).max == 1024
    assert config.platform == "tensorrt_plan" and params(config)["fastcifar.tensorrt_version"] == "11.4.0.6"
    assert text_format.Parse(triton.trt_config(sidecar, "m_trt", max_batch=8), mc.ModelConfig()).max_batch_size == 8
    with pytest.raises(FastCifarError, match="larger than the engine profile's MAX 1024"):
        triton.trt_config(sidecar, "m_trt", max_batch=2048)
    with pytest.raises(FastCifarError, match="starts at 4"):
        triton.trt_config({**sidecar, "profile": {"min": 4, "opt": 8, "max": 16}}, "m_trt")


@pytest.mark.parametrize("args,message", [
    (["--trt", "--batch", "1:64:512", "--triton-max-batch", "1024"], "larger than the engine profile's MAX 512"),
    (["--trt", "--batch", "8:64:512"], "needs an engine profile starting at 1"),
])
def test_triton_option_mistakes_write_nothing(tiny_model_dir, tmp_path, args, message):
    result = invoke(tiny_model_dir, "--out", tmp_path / "o", "--triton-repo", tmp_path / "r", *args)
    assert result.exit_code == 1 and message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


def test_triton_options_need_the_repo(tiny_model_dir, tmp_path):
    result = invoke(tiny_model_dir, "--out", tmp_path / "o", "--triton-max-batch", 8)
    assert result.exit_code == 1 and "add --triton-repo" in result.stderr and not (tmp_path / "o").exists()


def test_an_entry_of_another_model_is_never_replaced(exported, tmp_path, synthetic_dir):
    """Same run name, other weights: refused before any export work, the existing entry kept byte for byte; so is an
    entry fastcifar did not write."""
    other = make_saved_model(tmp_path / "elsewhere" / NAME, seed=1, data_dir=synthetic_dir)
    repo = exported["repo"]
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    result = invoke(other, "--out", tmp_path / "o", "--no-verify", "--triton-repo", repo)
    assert result.exit_code == 1 and "Traceback" not in result.output
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert f"{repo / (NAME + '_onnx')} already exists and holds a model exported from other weights" in error
    assert "it is kept" in error and not (tmp_path / "o").exists()
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before

    foreign = tmp_path / "repo2" / f"{NAME}_onnx"
    (foreign / "1").mkdir(parents=True)
    (foreign / "config.pbtxt").write_text('name: "resnet18-random_onnx"\nplatform: "onnxruntime_onnx"\n')
    onnx_file = exported["out"] / f"{NAME}.onnx"
    with pytest.raises(FastCifarError, match="holds something fastcifar did not write; it is kept"):
        triton.write_repository(tmp_path / "repo2", [onnx_file])
    assert (foreign / "config.pbtxt").read_text().startswith('name: "resnet18-random_onnx"')
    assert not (foreign / "1" / "model.onnx").exists()
    empty = tmp_path / "repo3" / f"{NAME}_onnx"
    empty.mkdir(parents=True)  # an empty directory is not an entry: it is filled
    (written,) = triton.write_repository(tmp_path / "repo3", [onnx_file])
    assert written.path == empty and parse_config(empty).name == empty.name


def test_a_bad_repo_path_is_one_error_line(tiny_model_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = invoke(tiny_model_dir, "--out", tmp_path / "o", "--no-verify", "--triton-repo", blocker / "repo")
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and errors[0].startswith(f"Error: --triton-repo {blocker / 'repo'} cannot be created")
    assert not (tmp_path / "o").exists()  # nothing exported, no empty --out left


def test_a_failed_engine_build_still_writes_the_onnx_entry(tiny_model_dir, exported, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises: no TensorRT here
    repo = tmp_path / "repo"
    result = invoke(tiny_model_dir, "--out", exported["out"], "--no-onnx", "--trt", "--triton-repo", repo)
    assert result.exit_code == 1 and "Error: --trt: no TensorRT engine built" in result.stderr
    assert sorted(p.name for p in repo.iterdir()) == [f"{NAME}_onnx"]
    assert parse_config(repo / f"{NAME}_onnx").platform == "onnxruntime_onnx"


@pytest.mark.parametrize("text", ['say "hi"', "back\\slash", "tab\tnew\nline", "chat 猫 é", "\x01"])
def test_string_values_survive_the_text_format(text):
    config = text_format.Parse(f"parameters {{ key: {triton.quote('k')} value: {{ string_value: "
                               f"{triton.quote(text)} }} }}", mc.ModelConfig())
    assert config.parameters["k"].string_value == text and triton.quote(text).isascii()
