"""`fastcifar predict`: any image file in, top-k labels out (table or JSON); bad files reported, the rest predicted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fastcifar.cli import cli


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """One file of each kind the issue names, plus a corrupt one."""
    from fastcifar.data.synthetic import make_images

    root = tmp_path_factory.mktemp("images")
    pixels = make_images(np.arange(4), np.random.default_rng(0))
    Image.fromarray(pixels[0]).save(root / "a.png")
    Image.fromarray(pixels[1]).resize((300, 200)).save(root / "b.jpg", quality=90)
    Image.fromarray(pixels[2]).convert("L").save(root / "c_grey.png")
    Image.fromarray(np.dstack([pixels[3], np.full((32, 32), 128, np.uint8)])).save(root / "d_rgba.png")
    Image.fromarray(pixels[0]).save(root / "e.webp")
    (root / "z_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return root


GOOD = ["a.png", "b.jpg", "c_grey.png", "d_rgba.png", "e.webp"]


def _invoke(*args):
    return CliRunner().invoke(cli, list(map(str, args)), catch_exceptions=False)


def test_predict_json_schema_and_probabilities(tiny_model_dir, image_dir):
    result = _invoke("predict", tiny_model_dir, *(image_dir / n for n in GOOD), "--device", "cpu",
                     "--topk", "3", "--json")
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)
    assert [Path(item["file"]).name for item in items] == GOOD
    for item in items:
        assert set(item) == {"file", "top", "backend", "precision"} and len(item["top"]) == 3
        assert (item["backend"], item["precision"]) == ("torch", "fp32")  # the CPU default, said in every item
        probs = [t["prob"] for t in item["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
        assert all(set(t) == {"label", "prob"} and isinstance(t["label"], str) for t in item["top"])


def test_predict_walks_directories_and_keeps_going_past_a_corrupt_file(tiny_model_dir, image_dir):
    result = _invoke("predict", tiny_model_dir, image_dir, image_dir / "missing.png", "--device", "cpu",
                     "--topk", "1", "--json")
    assert result.exit_code == 1  # something failed ...
    items = json.loads(result.stdout)  # ... but stdout is still valid JSON with every readable image
    assert sorted(Path(i["file"]).name for i in items) == sorted(GOOD)
    assert "z_corrupt.png" in result.stderr and "missing.png" in result.stderr
    assert "Traceback" not in result.stderr


def test_predict_table_output(tiny_model_dir, image_dir):
    result = _invoke("predict", tiny_model_dir, image_dir / "a.png", "--device", "cpu", "--topk", "2")
    assert result.exit_code == 0
    assert "a.png" in result.stdout and "top 2" in result.stdout and "%" in result.stdout


def test_predict_onnx_matches_torch(tiny_model_dir, image_dir, tmp_path):
    from fastcifar.export import export_onnx

    onnx_path = export_onnx(tiny_model_dir, tmp_path / "m.onnx", verify=False).path
    runs = {model: json.loads(_invoke("predict", model, image_dir / "a.png", image_dir / "b.jpg",
                                      "--device", "cpu", "--json").stdout) for model in (tiny_model_dir, onnx_path)}
    torch_top, onnx_top = runs.values()
    assert [i["top"][0]["label"] for i in torch_top] == [i["top"][0]["label"] for i in onnx_top]
    for a, b in zip(torch_top, onnx_top):
        assert abs(a["top"][0]["prob"] - b["top"][0]["prob"]) < 1e-4


def test_predict_user_errors_are_one_line_without_traceback(tiny_model_dir, image_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fastcifar", "predict", str(tmp_path / "no-such-run"),
                           str(image_dir / "a.png")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("Error:") and len(proc.stderr.strip().splitlines()) == 1
    result = CliRunner().invoke(cli, ["predict", str(tiny_model_dir), str(image_dir / "a.png"),
                                      "--backend", "tensorrt", "--device", "cpu"])
    assert result.exit_code == 1 and "CUDA GPU" in result.output


def test_predict_takes_the_model_first_before_or_after_the_options(tiny_model_dir, image_dir):
    """`predict MODEL IMAGE...`, as export/evaluate take MODEL; the options may come anywhere."""
    images = [image_dir / "a.png", image_dir / "b.jpg"]
    outputs = [_invoke("predict", *args) for args in ((tiny_model_dir, *images, "--device", "cpu", "--json"),
                                                      ("--device", "cpu", "--json", tiny_model_dir, *images))]
    assert all(r.exit_code == 0 for r in outputs), [r.output for r in outputs]
    first, second = (json.loads(r.stdout) for r in outputs)
    assert first == second and [Path(i["file"]).name for i in first] == ["a.png", "b.jpg"]
    # An image where the model belongs is named.
    wrong = CliRunner().invoke(cli, ["predict", str(images[0]), str(images[1]), "--device", "cpu"])
    assert wrong.exit_code == 1 and "a.png is not a model" in wrong.output


@pytest.mark.realdata
def test_predict_real_cifar_pngs_through_onnx_equals_the_arrays(real_cifar, tiny_model_dir, tmp_path):
    """PNGs of real test images give exactly the predictions of the original uint8 arrays."""
    from fastcifar.data.cifar import ensure_cifar, load_split
    from fastcifar.export import export_onnx
    from fastcifar.serve.predictor import load_predictor

    test = load_split(ensure_cifar(real_cifar, download=False), "test")
    for i in range(8):
        Image.fromarray(test.images[i]).save(tmp_path / f"test_{i}.png")
    onnx_path = export_onnx(tiny_model_dir, tmp_path / "m.onnx", verify=False).path
    result = _invoke("predict", onnx_path, *sorted(tmp_path.glob("test_*.png")), "--json", "--topk", "1")
    assert result.exit_code == 0
    labels = [i["top"][0]["label"] for i in json.loads(result.stdout)]
    predictor = load_predictor(onnx_path, device="cpu")
    expected = [predictor.class_names[k] for k in predictor.predict(test.images[:8]).argmax(1)]
    assert labels == expected


def test_the_predictions_table_prints_a_long_path_whole_in_a_log(tiny_model_dir, image_dir, tmp_path):
    """Without a terminal rich assumes 80 columns and cut the file column short ('a_very_long_fol…')."""
    deep = tmp_path / ("a_very_long_folder_name_" * 4) / "a_photo_with_a_rather_long_file_name.png"
    deep.parent.mkdir(parents=True)
    deep.write_bytes((image_dir / "a.png").read_bytes())
    result = _invoke("predict", tiny_model_dir, deep, "--device", "cpu", "--topk", "3")
    assert result.exit_code == 0, result.output
    assert str(deep) in result.stdout
