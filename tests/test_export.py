"""ONNX export: graph I/O, dynamic batch, metadata, parity against PyTorch in ONNX Runtime (CPU), INT8 Q/DQ, CLI.

Exports are slow-ish (~3 s each on 2 cores), so the fp32/fp16 x raw/normalized matrix is exported once per
module and shared. Parity runs on 64 synthetic test images unless a test says otherwise.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import onnx
import pytest
import torch

from conftest import make_saved_model
from fastcifar.errors import FastCifarError
from fastcifar.export import export_onnx
from fastcifar.export import onnx as ox
from fastcifar.export.parity import verify_onnx
from fastcifar.preprocess import normalize_images
from fastcifar.export import parity

N_VERIFY = 64
MATRIX = [("fp32", "raw"), ("fp16", "raw"), ("fp32", "normalized"), ("fp16", "normalized")]


@pytest.fixture(scope="module")
def exports(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported")
    return {(p, k): export_onnx(tiny_model_dir, out, precision=p, input_kind=k, max_images=N_VERIFY)
            for p, k in MATRIX}


def session(path):
    return parity.make_ort_session(path, ["CPUExecutionProvider"])


def test_file_names_follow_run_precision_and_input(exports):
    names = {key: r.path.name for key, r in exports.items()}
    assert names == {("fp32", "raw"): "resnet18-random.onnx", ("fp16", "raw"): "resnet18-random-fp16.onnx",
                     ("fp32", "normalized"): "resnet18-random-normalized.onnx",
                     ("fp16", "normalized"): "resnet18-random-fp16-normalized.onnx"}


@pytest.mark.parametrize("precision,input_kind", MATRIX)
def test_export_is_self_contained_checked_and_matches_torch(exports, precision, input_kind):
    result = exports[(precision, input_kind)]
    assert result.path.is_file() and result.size_bytes == result.path.stat().st_size
    assert list(result.path.parent.glob("*.data")) == []  # weights inside, no external data file
    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto, full_check=True)
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in proto.graph.initializer)
    assert {o.domain: o.version for o in proto.opset_import}[""] == result.opset == 20
    # the precision lives in the graph's own types: fp16 weights for fp16, none for fp32
    weight_types = {t.data_type for t in proto.graph.initializer if np.prod(t.dims) > 1000}  # conv/fc weights
    assert weight_types == {onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.FLOAT}
    p = result.parity
    assert p["passed"] and p["n_images"] == N_VERIFY and p["precision"] == precision
    assert p["top1_agreement"] == 1.0 if precision == "fp32" else p["top1_agreement"] >= 0.95
    assert p["max_abs_diff"] <= p["tolerance"]
    assert p["max_abs_diff"] < (1e-4 if precision == "fp32" else 5e-2)
    assert p["torch_accuracy"] == pytest.approx(p["onnx_accuracy"], abs=0.05)
    # ORT's CPU provider runs fp16 nodes through inserted casts: the record must say the arithmetic was fp32
    on_cpu = p["runtime"].split()[-1].startswith("CPU")
    assert (p["emulated"] is not None) == (precision == "fp16" and on_cpu)
    assert json.loads(result.parity_path.read_text()) == p
    assert result.parity_path.name == result.path.name.replace(".onnx", ".parity.json")


@pytest.fixture(scope="module")
def reference(tiny_model_dir, synthetic_dir):
    """(spec, 37 test images, the PyTorch model's logits for them)."""
    from fastcifar.data.cifar import load_cifar10
    from fastcifar.models import load_model

    model, spec, _ = load_model(tiny_model_dir)
    images = load_cifar10(synthetic_dir, download=False).test.images[:37]
    with torch.inference_mode():
        return spec, images, model(normalize_images(images, spec)).numpy()


@pytest.mark.parametrize("precision,input_kind", MATRIX)
def test_io_contract_and_dynamic_batch(exports, reference, precision, input_kind):
    sess = session(exports[(precision, input_kind)].path)
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    expected = {"raw": ("pixels", "tensor(uint8)", [32, 32, 3]), "normalized": ("images", "tensor(float)", [3, 32, 32])}
    assert (inp.name, inp.type, inp.shape[1:]) == expected[input_kind]
    assert isinstance(inp.shape[0], str)  # symbolic batch dimension
    assert (out.name, out.type) == ("logits", "tensor(float)")  # float32 logits even from an fp16 graph
    spec, images, logits = reference
    for batch in (1, 37):
        x = images[:batch]
        feed = x if input_kind == "raw" else normalize_images(x, spec).numpy()
        got = sess.run(None, {inp.name: feed})[0]
        assert got.shape == (batch, 10) and got.dtype == np.float32
        np.testing.assert_allclose(got, logits[:batch], atol=1e-4 if precision == "fp32" else 3e-2)


def test_metadata_round_trip(exports, tiny_model_dir):
    from fastcifar.models import read_model_meta

    run = read_model_meta(tiny_model_dir)
    for (precision, input_kind), result in exports.items():
        meta = ox.read_onnx_metadata(result.path)
        assert meta == result.metadata
        assert meta["class_names"] == run["class_names"] and len(meta["class_names"]) == 10
        assert meta["mean"] == pytest.approx(run["mean"]) and meta["std"] == pytest.approx(run["std"])
        assert (meta["image_size"], meta["input_size"]) == (32, 32)
        assert (meta["input_kind"], meta["precision"]) == (input_kind, precision)
        assert (meta["arch"], meta["stem"], meta["init"]) == ("resnet18", "cifar", "random")
        assert meta["source_run"] == "resnet18-random" and meta["test_acc"] == pytest.approx(0.1)
        assert meta["format_version"] == ox.META_FORMAT_VERSION
        assert meta["input_name"] == {"raw": "pixels", "normalized": "images"}[input_kind]
    # on disk: plain strings, lists/numbers JSON-encoded, all under the fastcifar. prefix
    props = {p.key: p.value for p in onnx.load(str(exports[("fp32", "raw")].path)).metadata_props}
    assert props["fastcifar.input_kind"] == "raw" and json.loads(props["fastcifar.mean"]) == run["mean"]
    assert json.loads(props["fastcifar.image_size"]) == 32


def test_read_metadata_rejects_foreign_files(tmp_path):
    foreign = tmp_path / "other.onnx"
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph), str(foreign))
    with pytest.raises(FastCifarError, match="not written by `fastcifar export`"):
        ox.read_onnx_metadata(foreign)
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all \xff\xfe")
    with pytest.raises(FastCifarError, match="not a readable ONNX file"):
        ox.read_onnx_metadata(tmp_path / "junk.onnx")


def test_resize_happens_inside_raw_graphs(tmp_path, synthetic_dir):
    """A model trained at 64 px: `raw` takes 32 px pixels and resizes inside; `normalized` takes 64 px."""
    run = make_saved_model(tmp_path / "r18-64", stem="imagenet", image_size=64, data_dir=synthetic_dir)
    raw = export_onnx(run, tmp_path / "out", max_images=32)
    assert raw.parity["passed"] and raw.parity["top1_agreement"] == 1.0
    assert (raw.metadata["image_size"], raw.metadata["input_size"]) == (64, 32)
    assert "Resize" in {n.op_type for n in onnx.load(str(raw.path)).graph.node}
    norm = export_onnx(run, tmp_path / "out", input_kind="normalized", verify=False)
    assert session(norm.path).get_inputs()[0].shape[1:] == [3, 64, 64]
    assert (norm.metadata["image_size"], norm.metadata["input_size"]) == (64, 64)


def test_bf16_needs_opset_22_and_is_checked_by_emulation(tiny_model_dir, tmp_path):
    with pytest.raises(FastCifarError, match="opset 20 is too old for bf16"):
        export_onnx(tiny_model_dir, tmp_path, precision="bf16", opset=20)
    assert list(tmp_path.iterdir()) == []
    result = export_onnx(tiny_model_dir, tmp_path, precision="bf16", max_images=32)
    assert result.opset == 22 and result.path.name == "resnet18-random-bf16.onnx"
    proto = onnx.load(str(result.path))
    assert onnx.TensorProto.BFLOAT16 in {t.data_type for t in proto.graph.initializer}
    # ONNX Runtime has no bf16 Conv on CPU: the check runs the bf16-rounded weights in fp32 and says so
    assert result.parity["passed"] and "fp32 arithmetic" in (result.parity["emulated"] or "")


def test_mismatch_fails_the_export_and_keeps_files(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(parity.REL_TOLERANCE, "fp32", 0.0)  # any rounding difference now counts as a mismatch
    with pytest.raises(FastCifarError, match="parity check failed.*max \\|logit diff\\|.*--no-verify") as failed:
        export_onnx(tiny_model_dir, tmp_path, max_images=16)
    # sentences that read apart: what failed, what is kept where, how to skip the check
    assert " on 16 images). The ONNX file is kept for inspection, with these figures in resnet18-random.parity.json " \
           "beside it. To export without the check, pass --no-verify." in str(failed.value)
    record = json.loads((tmp_path / "resnet18-random.parity.json").read_text())
    assert record["passed"] is False and record["failures"]
    assert (tmp_path / "resnet18-random.onnx").is_file()


def test_verify_detects_a_different_model(exports, tmp_path, synthetic_dir):
    other = make_saved_model(tmp_path / "other", seed=1, data_dir=synthetic_dir)
    record = verify_onnx(exports[("fp32", "raw")].path, other, max_images=N_VERIFY)
    assert not record["passed"] and record["max_abs_diff"] > record["tolerance"]


def test_missing_data_fails_before_writing_and_no_verify_needs_none(tiny_model_dir, tmp_path):
    with pytest.raises(FastCifarError, match="--no-verify"):
        export_onnx(tiny_model_dir, tmp_path / "out", data_dir=tmp_path / "nowhere")
    assert not (tmp_path / "out").exists()
    result = export_onnx(tiny_model_dir, tmp_path / "out", data_dir=tmp_path / "nowhere", verify=False)
    assert result.parity is None and result.parity_path is None and result.path.is_file()
    assert list((tmp_path / "out").glob("*.json")) == []


@pytest.mark.parametrize("kwargs,message", [({"precision": "fp8"}, "unknown precision"),
                                            ({"input_kind": "nhwc"}, "unknown input kind")])
def test_bad_options_are_user_errors(tiny_model_dir, tmp_path, kwargs, message):
    with pytest.raises(FastCifarError, match=message):
        export_onnx(tiny_model_dir, tmp_path, **kwargs)


def test_parity_policy():
    labels = np.array([0, 1, 2, 3])
    ref = np.eye(4, 10, dtype=np.float32) * 10.0
    stats = parity.parity_stats(ref, ref + 1e-4, labels, "fp32")
    assert stats["passed"] and stats["top1_agreement"] == 1.0 and stats["tolerance"] == pytest.approx(1e-3)
    assert stats["max_abs_diff"] == pytest.approx(1e-4, rel=1e-2) and stats["torch_accuracy"] == 1.0
    flipped = ref.copy()
    flipped[0] = ref[1]
    bad = parity.parity_stats(ref, flipped, labels, "fp32")
    assert not bad["passed"] and bad["top1_agreement"] == 0.75 and bad["onnx_accuracy"] == 0.75
    # int8: no logit tolerance; judged by agreement and accuracy drop
    int8 = parity.parity_stats(ref, ref * 0.8, labels, "int8")
    assert int8["passed"] and int8["tolerance"] is None
    assert not parity.parity_stats(ref, flipped, labels, "int8")["passed"]


def test_int8_qdq_export(exports, tiny_model_dir):
    from fastcifar.export.quantize import quantize_int8

    source = exports[("fp32", "raw")]
    result = quantize_int8(source.path, tiny_model_dir, n_images=32, verify=False)
    assert result.path.name == "resnet18-random-int8.onnx" and result.precision == "int8"
    proto = onnx.load(str(result.path))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") >= 20 and "DequantizeLinear" in ops
    gemm_inputs = {i for n in proto.graph.node if n.op_type == "Gemm" for i in n.input}
    assert gemm_inputs and not any("DequantizeLinear" in i for i in gemm_inputs)  # the classifier stays float
    zero_points = [t for t in proto.graph.initializer if "zero_point" in t.name]
    assert zero_points and all(not onnx.numpy_helper.to_array(t).any() for t in zero_points)  # symmetric
    meta = ox.read_onnx_metadata(result.path)
    assert meta["precision"] == "int8" and meta["int8_calibration"]["n_images"] == 32
    assert meta["class_names"] == source.metadata["class_names"]
    record = verify_onnx(result.path, tiny_model_dir, max_images=N_VERIFY)
    # an untrained net has near-tied logits, so agreement is not asserted; the logits must still track fp32
    assert record["mean_abs_diff"] < 0.1 * record["logit_scale"]
    with pytest.raises(FastCifarError, match="starts from an fp32 export"):
        quantize_int8(exports[("fp16", "raw")].path, tiny_model_dir, n_images=8)


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` now raises ImportError


def test_cli_export_then_trt_without_tensorrt(tiny_model_dir, tmp_path, no_tensorrt):
    from click.testing import CliRunner

    from fastcifar.cli import cli

    out = tmp_path / "exp"
    result = CliRunner().invoke(cli, ["export", str(tiny_model_dir), "--out", str(out), "--verify-images", "32",
                                      "--trt", "--json"])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    (onnx_result,) = summary["onnx"]
    assert onnx_result["parity"]["passed"] and (out / "resnet18-random.onnx").is_file()
    assert (out / "resnet18-random.parity.json").is_file()
    assert summary["engine"] is None and "pypi.nvidia.com" in summary["error"]
    stderr = result.stderr.strip().splitlines()
    error_lines = [line for line in stderr if line.startswith("Error")]
    assert len(error_lines) == 1 and error_lines[0].startswith("Error: --trt: no TensorRT engine built")
    assert all(line.startswith(("export: ", "Error")) for line in stderr)  # step lines, then the one error
    assert any("building the TensorRT engine" in line for line in stderr)
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args,message", [(["--trt", "--batch", "8:4:16"], "MIN <= OPT <= MAX"),
                                          (["--int8-calib-images", "8", "--precision", "fp16"], "drop --precision"),
                                          (["--no-onnx"], "does not exist")])
def test_cli_option_mistakes_write_nothing(tiny_model_dir, tmp_path, args, message):
    from click.testing import CliRunner

    from fastcifar.cli import cli

    result = CliRunner().invoke(cli, ["export", str(tiny_model_dir), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 1 and message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.realdata
def test_parity_on_real_test_images(exports, tiny_model_dir, real_cifar):
    p = verify_onnx(exports[("fp32", "raw")].path, tiny_model_dir, real_cifar, max_images=200)
    assert p["passed"] and p["top1_agreement"] == 1.0 and p["n_images"] == 200
    assert "cifar-10-batches-py" in p["data_dir"]


# ---------------------------------------------------------------------------------------------- an export dir's files


def test_an_export_dir_only_ever_describes_the_model_in_it(tmp_path, synthetic_dir, monkeypatch):
    """Two models with one run name cannot overwrite each other's file; a re-export without the check drops the old
    parity record; Ctrl-C during the check removes the unverified file and says so."""
    a = make_saved_model(tmp_path / "a" / "imagenet-f1-s0", seed=0, data_dir=synthetic_dir)
    b = make_saved_model(tmp_path / "b" / "imagenet-f1-s0", seed=1, data_dir=synthetic_dir)
    out = tmp_path / "out"
    first = export_onnx(a, out, max_images=16)
    parity_file = first.path.with_suffix(".parity.json")
    assert parity_file.is_file()
    original = first.path.read_bytes()
    with pytest.raises(FastCifarError, match="exported from other weights; it is kept"):
        export_onnx(b, out, max_images=16)  # same file name, other weights
    assert first.path.read_bytes() == original and parity_file.is_file()
    again = export_onnx(a, out, verify=False)  # the same model re-exported in place, unchecked
    assert again.path == first.path and not parity_file.exists()  # no record of another file's check stays

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(parity, "verify_onnx", interrupted)
    with pytest.raises(FastCifarError, match="removed the unverified") as info:
        export_onnx(a, out, max_images=16)
    assert info.value.exit_code == 130 and not first.path.exists()


def test_model_files_are_readable_by_others(tmp_path):
    old = os.umask(0o022)
    try:
        run = make_saved_model(tmp_path / "r")
    finally:
        os.umask(old)
    assert (run / "model.safetensors").stat().st_mode & 0o777 == 0o644  # safetensors' own write made it 0600
    assert (run / "model.json").stat().st_mode & 0o777 == 0o644


def test_export_serve_and_bench_call_a_run_by_one_name(tmp_path, synthetic_dir):
    """A run directory named "my run ü" is "my-run" everywhere (export's file, serve's model, bench's results) - the
    export used to take the name recorded in model.json - and a run's best weights are "<run>-best", so two runs'
    best checkpoints never share a bench results file. The parity message counts the images really checked."""
    from fastcifar.bench.harness import BenchConfig, default_name
    from fastcifar.models import model_name

    run = make_saved_model(tmp_path / "my run ü", data_dir=synthetic_dir)
    logged = []
    result = export_onnx(run, tmp_path / "out", data_dir=synthetic_dir, max_images=1000, log=logged.append)
    assert result.path.name == "my-run.onnx" and model_name(run) == "my-run"
    assert any("on 200 test images" in line for line in logged), logged  # the synthetic test split holds 200
    a, b = make_saved_model(tmp_path / "a"), make_saved_model(tmp_path / "b")
    for run_dir in (a, b):
        (run_dir / "model.safetensors").rename(run_dir / "best.safetensors")
        (run_dir / "model.json").rename(run_dir / "best.json")
    names = {default_name(BenchConfig(models=[str(r / "best.safetensors")]), "cpu") for r in (a, b)}
    assert names == {"inference-a-best-cpu", "inference-b-best-cpu"}
