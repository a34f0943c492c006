"""Every verb against bad input through the real CLI: a non-zero exit, exactly one `Error:` line, no traceback, and
nothing new on disk - not a run directory, not a report, not a cache entry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_saved_model
from fastcifar.cli import cli


@pytest.fixture(scope="module")
def places(tmp_path_factory, synthetic_dir, tiny_model_dir, fake_weights):
    """Inputs the cases point at: a text file posing as an image/weights, an empty dir, an unfinished run."""
    root = tmp_path_factory.mktemp("places")
    (root / "text.png").write_text("not an image")
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "picture.png")  # a real image, not weights
    (root / "empty").mkdir()
    unfinished = root / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text(json.dumps({"epochs": 2}))
    (root / "corrupt.onnx").write_bytes(b"\x08\x07 not a protobuf \xff\xfe")
    mismatch = root / "run_r34"  # a resnet34's weights beside a resnet18's model.json
    make_saved_model(mismatch, data_dir=synthetic_dir)
    make_saved_model(root / "r34", arch="resnet34", data_dir=synthetic_dir)
    (root / "r34" / "model.safetensors").replace(mismatch / "model.safetensors")
    return {"DATA": str(synthetic_dir), "MODEL": str(tiny_model_dir), "TEXT": str(root / "text.png"),
            "EMPTY": str(root / "empty"), "UNFINISHED": str(unfinished), "CORRUPT": str(root / "corrupt.onnx"),
            "MISMATCH": str(mismatch), "PICTURE": str(root / "picture.png"), "R18WEIGHTS": str(fake_weights)}


CASES = [
    # data
    ("data", ["--data-dir", "{EMPTY}", "--no-download"], "CIFAR-10 not found"),
    ("data", ["--data-dir", "nowhere/deeper"], "cannot download CIFAR-10"),  # offline: no empty folder stays
    ("data", ["--data-dir", "{TEXT}"], "is a file"),
    # train. --data-dir {EMPTY} --no-download would fail "CIFAR-10 not found": these fail first, before the data
    # loads (docs/training.md)
    ("train", ["--data-dir", "{EMPTY}", "--no-download", "--device", "cpu", "--out", "file.png/sub"],
     "Not a directory"),
    ("train", ["--data-dir", "{EMPTY}", "--no-download", "--device", "cpu", "--out", "/proc/x"], "/proc/x"),
    ("train", ["--data-dir", "{EMPTY}", "--no-download", "--device", "cpu", "--init", "{TEXT}"],
     "not a readable state dict"),
    ("train", ["--data-dir", "{EMPTY}", "--no-download", "--device", "cpu", "--init", "{PICTURE}"],
     "not a file of weights"),
    ("train", ["--data-dir", "{EMPTY}", "--no-download", "--device", "cpu", "--init", "{MODEL}"],
     "--init {MODEL} is a run directory, not a weights file: pass its model, --init {MODEL}/model.safetensors"),
    ("train", ["--data-dir", "{EMPTY}", "--no-download", "--device", "cpu", "--init", "{EMPTY}"],
     "is a directory, not a weights file"),
    ("train", ["--data-dir", "{EMPTY}", "--no-download", "--device", "tpu"], "unknown device 'tpu'"),
    ("train", ["--data-dir", "{DATA}", "--device", "cpu", "--image-size", "1000"], "--image-size 1000 is outside"),
    ("train", ["--data-dir", "{DATA}", "--device", "cpu", "--epochs", "0"], "--epochs must be >= 1"),
    ("train", ["--data-dir", "{DATA}", "--device", "cpu", "--val-fraction", "2"], "--val-fraction"),
    ("train", ["--data-dir", "{DATA}", "--device", "cpu", "--lr", "abc"], "'abc' is not a valid float"),
    ("train", ["--data-dir", "{EMPTY}", "--no-download", "--device", "cpu"], "CIFAR-10 not found"),
    ("train", ["--resume", "{UNFINISHED}", "--epochs", "5"], "drop --epochs"),
    ("train", ["--resume", "{EMPTY}"], "cannot resume"),
    ("train", ["--data-dir", "{DATA}", "--device", "cpu", "--seed", "-1"], "--seed must be >= 0"),
    ("train", ["--data-dir", "{DATA}", "--device", "cpu", "--compile", "--compile-mode", "bogus"],
     "Invalid value for '--compile-mode'"),
    ("train", ["--data-dir", "{DATA}", "--device", "cpu", "--lr", "inf"], "--lr must be a finite number"),
    ("train", ["--data-dir", "{DATA}", "--device", "cpu", "--weight-decay", "-1"], "--weight-decay must be"),
    ("train", ["--data-dir", "{DATA}", "--device", "cpu", "--val-fraction", "0.95", "--train-limit", "10"],
     "held out by --val-fraction 0.95"),
    ("train", ["--data-dir", "{DATA}", "--device", "cpu", "--whiten-stem", "--init", "imagenet"], "random init"),
    # EfficientNet-Lite0: a ResNet's stem, a ResNet's weights, a ResNet's levers, too small an image
    ("train", ["--data-dir", "{DATA}", "--device", "cpu", "--arch", "efficientnet_lite0", "--stem", "cifar"],
     "--stem cifar is a ResNet stem"),
    ("train", ["--data-dir", "{EMPTY}", "--no-download", "--device", "cpu", "--arch", "efficientnet_lite0", "--init",
               "{R18WEIGHTS}"], "these weights are a ResNet's (conv1/layer1 keys), not efficientnet_lite0's"),
    ("train", ["--data-dir", "{DATA}", "--device", "cpu", "--arch", "efficientnet_lite0", "--zero-init-residual"],
     "shape a ResNet's blocks"),
    ("compare", ["--data-dir", "{DATA}", "--device", "cpu", "--arch", "efficientnet_lite0", "--image-sizes", "16"],
     "--image-sizes 16 is too small for efficientnet_lite0: it downsamples 32x"),
    # compare
    ("compare", ["--data-dir", "{DATA}", "--device", "cpu", "--fractions", "abc"], "comma-separated numbers"),
    ("compare", ["--data-dir", "{DATA}", "--device", "cpu", "--lr-grid", "x"], "--lr-grid takes"),
    ("compare", ["--data-dir", "{DATA}", "--device", "cpu", "--image-sizes", "16"],
     "--image-sizes 16 is outside 32..512"),
    ("compare", ["--data-dir", "{DATA}", "--device", "cpu", "--robustness-severities", "9"],
     "--robustness-severities must be within 1-5"),
    ("compare", ["--data-dir", "{DATA}", "--device", "cpu", "--robustness-severities", "5-1"],
     "--robustness-severities range '5-1' runs backwards"),
    ("compare", ["--data-dir", "{EMPTY}", "--no-download", "--device", "tpu"], "unknown device 'tpu'"),  # before data
    ("compare", ["--data-dir", "{EMPTY}", "--no-download", "--device", "cpu", "--pretrained-weights", "nowhere.pth"],
     "nowhere.pth does not exist or is not a file"),
    ("compare", ["--data-dir", "{DATA}", "--device", "cpu", "--pretrained-weights", "{TEXT}"],
     "not a readable state dict"),
    ("compare", ["--data-dir", "{DATA}", "--device", "cpu", "--out", "{TEXT}"], "is a file"),
    # export
    ("export", ["{MODEL}", "--out", "/proc/x"], "--out /proc/x cannot be created"),
    ("export", ["{UNFINISHED}", "--out", "out"], "unfinished run"),
    ("export", ["nowhere/run", "--out", "out"], "no model at nowhere/run"),
    ("export", ["{MODEL}", "--out", "out", "--trt", "--batch", "8:2:4"], "--batch"),
    ("export", ["{MODEL}", "--out", "out", "--opset", "99"], "newer than the installed onnx"),
    ("export", ["{CORRUPT}", "--out", "out", "--trt"], "not a readable ONNX file"),
    ("export", ["{MISMATCH}", "--out", "ex_r34"], "does not hold a resnet18"),
    # predict
    ("predict", ["nowhere", "{TEXT}"], "does not exist"),
    ("predict", ["{MODEL}", "{TEXT}", "--device", "cpu"], "not an image"),
    ("predict", ["{MODEL}", "{TEXT}", "--device", "cpu", "--topk", "20"], "more than the model's 10"),
    ("predict", ["{UNFINISHED}", "{TEXT}", "--device", "cpu"], "unfinished run"),
    ("predict", ["{MODEL}", "{TEXT}", "--backend", "onnxruntime", "--precision", "bf16"],
     "exported with"),
    # bench
    ("bench", ["{MODEL}", "--backends", "pytorch"], "unknown backend 'pytorch'"),
    ("bench", ["{MODEL}", "--batch-sizes", "0"], "--batch-sizes must be positive"),
    ("bench", ["nowhere"], "does not exist"),
    ("bench", ["{MODEL}", "--name", "../../escape"], "--name is a file name stem"),
    ("bench", ["{MODEL}", "--data-dir", "{EMPTY}", "--device", "cpu"], "--no-download"),
    ("bench", ["{MODEL}", "--data-dir", "{DATA}", "--device", "cpu", "--results-dir", "/proc/x"],
     "--results-dir /proc/x cannot be created"),
    # evaluate
    ("evaluate", ["nowhere/run"], "does not exist"),
    ("evaluate", ["{MODEL}", "--corruptions", "fog"], "unknown corruption(s) fog"),
    ("evaluate", ["{MODEL}", "--data-dir", "{DATA}", "--device", "cpu", "--corruptions", "none", "--plots",
                  "/proc/x"], "--plots /proc/x cannot be created"),
    ("evaluate", ["{UNFINISHED}", "--device", "cpu"], "unfinished run"),
    ("evaluate", ["{MODEL}", "--severities", "5-1"], "runs backwards"),
    ("evaluate", ["{MODEL}", "--data-dir", "{EMPTY}", "--device", "cpu"], "never downloads it"),
    # demo
    ("demo", ["--pretrained", "nowhere", "--scratch", "{MODEL}"], "does not exist"),
    ("demo", ["--pretrained", "{UNFINISHED}", "--scratch", "{MODEL}"], "unfinished run"),
    ("demo", ["--pretrained", "{MODEL}", "--scratch", "{MODEL}", "--port", "70000"], "70000"),
    # the model missing, or an image where the model belongs
    ("export", ["--out", "out"], "Missing argument 'MODEL'"),
    ("bench", ["--device", "cpu"], "Missing argument 'MODEL...'"),
    ("predict", ["{TEXT}", "{PICTURE}", "--device", "cpu"], "is not a model"),
    ("predict", ["{MODEL}", "--device", "cpu"], "Missing IMAGE"),
]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("verb, args, message", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_error_line_and_leaves_nothing(verb, args, message, places, tmp_path, monkeypatch):
    (tmp_path / "file.png").write_text("a file where a directory is asked for")
    monkeypatch.chdir(tmp_path)  # default outputs (runs/, reports/, exported/) would land here
    monkeypatch.setenv("FASTCIFAR_DATA", str(tmp_path / "no-data-here"))
    before = _tree(tmp_path)
    result = CliRunner().invoke(cli, [verb, *(a.format(**places) for a in args)])
    output = result.output
    assert result.exit_code != 0, output
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, output
    assert message.format(**places) in errors[0], output
    assert "Traceback" not in output and not isinstance(result.exception, (AssertionError, TypeError, KeyError))
    assert "weights_only" not in output  # never torch's advice to load an untrusted file with code execution
    assert _tree(tmp_path) == before, f"left behind: {sorted(_tree(tmp_path) - before)}"
    assert not os.path.exists(os.path.join(places["UNFINISHED"], "model.safetensors"))


def test_train_logs_one_line_per_epoch_without_a_terminal(tmp_path, synthetic_dir):
    """`fastcifar train ... > log 2>&1` (nohup, CI, a cluster job): the header and every epoch reach the log."""
    import subprocess
    import sys

    log = tmp_path / "log"
    with log.open("w") as out:
        proc = subprocess.run([sys.executable, "-m", "fastcifar", "train", "--data-dir", str(synthetic_dir),
                               "--device", "cpu", "--preset", "smoke", "--train-limit", "200", "--epochs", "2",
                               "--batch-size", "32", "--out", str(tmp_path / "run")],
                              stdout=out, stderr=subprocess.STDOUT, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "2"})
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "train: resnet18 (random init, imagenet stem, 32 px) on cpu (fp32)" in text
    assert [line.split("/")[0] for line in text.splitlines() if line.startswith("epoch")] == ["epoch   1", "epoch   2"]


def test_image_in_pillows_warning_band_is_read_without_a_raw_warning(tmp_path, monkeypatch):
    import warnings

    import numpy as np
    from PIL import Image

    from fastcifar.data.images import load_image

    Image.fromarray(np.full((100, 100, 3), 90, np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6_000)  # 10,000 px: above the warning, below the refusal
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pixels = load_image(tmp_path / "big.png")
    assert pixels.shape == (32, 32, 3) and not [w for w in caught if "DecompressionBomb" in str(w.category)]


def test_busy_machine_times_are_not_told_as_a_speed_result():
    from fastcifar.study.results import summarize

    records = [{"init": init, "fraction": 1.0, "seed": seed, "setting": "32px-cifar", "name": f"{init}-{seed}",
                "test_acc": 0.8, "test_loss": 0.5, "train_seconds": seconds, "time_to_90pct_final_test_acc": seconds,
                "n_train": 900, "n_test": 1000, "train_limit": 1000, "batch_size": 64, "lr": 0.05, "epochs": 2,
                "per_class_test_acc": [0.8] * 10, "confusion": np.eye(10, dtype=int).tolist(),
                "class_names": [str(c) for c in range(10)]}
               for (init, seed, seconds) in [("imagenet", 0, 10.0), ("imagenet", 1, 90.0), ("random", 0, 11.0),
                                             ("random", 1, 12.0)]]
    source = {"kind": "torchvision", "verified_imagenet": True, "label": "x"}
    busy = summarize({}, source, records, {})
    assert "the machine was busy" in busy["conclusion"]
    assert "reaches 90 % of its final accuracy" not in busy["conclusion"]
    # The same study on an idle machine says the same but for the sentences built from wall times, which results.json
    # names (conclusion_from_times), so two runs of one study can be compared without them (tests/test_ray.py).
    idle = summarize({}, source, [{**r, "train_seconds": 10.0, "time_to_90pct_final_test_acc": 5.0} for r in records],
                     {})
    assert [s for s in busy["conclusion_from_times"] if "machine was busy" in s] == busy["conclusion_from_times"]
    assert len(idle["conclusion_from_times"]) == 1 and "reaches 90 %" in idle["conclusion_from_times"][0]

    def without_times(results):
        text = results["conclusion"]
        for sentence in results["conclusion_from_times"]:
            text = text.replace(sentence, "")
        return " ".join(text.split())

    assert without_times(busy) == without_times(idle) and "1,000 images" in without_times(idle)


def test_a_cuda_device_this_machine_lacks_is_one_message(monkeypatch):
    """torch.device accepts any cuda:N; without this check the first tensor sent there failed, after the data."""
    import torch

    from fastcifar.errors import FastCifarError
    from fastcifar.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert str(resolve_device("cuda")) == "cuda:0"
    with pytest.raises(FastCifarError, match=r"--device cuda:1: this machine has 1 CUDA device\(s\), cuda:0 to cuda:0"):
        resolve_device("cuda:1")
