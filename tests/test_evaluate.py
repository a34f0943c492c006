"""`fastcifar evaluate`: calibration metrics on known inputs, CIFAR-10-C corruptions, the official-file path, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fastcifar.cli import cli
from fastcifar.errors import FastCifarError
from fastcifar.robustness import parse_corruptions, parse_severities
from fastcifar.robustness.corruptions import CORRUPTIONS, corrupt
from fastcifar.robustness.metrics import calibration


def test_calibration_metrics_on_known_inputs():
    # Two images, both predicted with confidence ~0.9 (one right, one wrong): ECE = |0.5 - 0.9| = 0.4.
    p = 0.9
    logit = np.log(p / ((1 - p) / 9))
    logits = np.zeros((2, 10))
    logits[0, 3] = logit
    logits[1, 5] = logit
    m = calibration(logits, np.array([3, 4]))
    assert m["accuracy"] == 0.5 and m["ece"] == pytest.approx(0.4, abs=1e-9)
    assert m["nll"] == pytest.approx((-np.log(0.9) - np.log(0.1 / 9)) / 2)
    brier_right = (1 - p) ** 2 + 9 * ((1 - p) / 9) ** 2
    brier_wrong = p ** 2 + (1 - (1 - p) / 9) ** 2 + 8 * ((1 - p) / 9) ** 2
    assert m["brier"] == pytest.approx((brier_right + brier_wrong) / 2)
    assert sum(m["reliability"]["count"]) == 2 and len(m["reliability"]["count"]) == 15
    perfect = calibration(np.eye(10)[[1, 2]] * 100, np.array([1, 2]))
    assert perfect["accuracy"] == 1 and perfect["ece"] == pytest.approx(0, abs=1e-6)


def test_corruptions_are_deterministic_and_grow_with_severity():
    from fastcifar.data.synthetic import make_images

    pixels = torch.from_numpy(make_images(np.arange(20) % 10, np.random.default_rng(0)))
    for name in CORRUPTIONS:
        first = corrupt(pixels, name, 3, seed=1)
        assert first.dtype == torch.uint8 and first.shape == pixels.shape
        assert torch.equal(first, corrupt(pixels, name, 3, seed=1)), name
    for name in ("gaussian_noise", "shot_noise", "impulse_noise", "gaussian_blur", "contrast", "brightness"):
        change = [(corrupt(pixels, name, s).float() - pixels.float()).abs().mean() for s in (1, 5)]
        assert change[0] < change[1], name
    assert not torch.equal(corrupt(pixels, "gaussian_noise", 5, seed=1), corrupt(pixels, "gaussian_noise", 5, seed=2))


def test_hsv_corruptions_match_skimage_definitions():
    """brightness / saturate work in RGB; check them against an explicit HSV round trip (matplotlib's)."""
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    rng = np.random.default_rng(0)
    pixels = rng.integers(1, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    x = pixels / 255.0
    hsv = rgb_to_hsv(x)
    bright = hsv.copy()
    bright[..., 2] = np.clip(bright[..., 2] + 0.3, 0, 1)
    saturated = hsv.copy()
    saturated[..., 1] = np.clip(saturated[..., 1] * 2.5 + 0.2, 0, 1)
    for name, want in (("brightness", hsv_to_rgb(bright)), ("saturate", hsv_to_rgb(saturated))):
        got = corrupt(torch.from_numpy(pixels), name, 5).numpy().astype(int)
        assert np.abs(got - (want * 255).astype(int)).max() <= 1, name


def test_option_parsing_refuses_with_exit_code_2():
    assert parse_corruptions("all") == tuple(CORRUPTIONS) and parse_corruptions("none") == ()
    assert parse_corruptions("contrast,gaussian_noise") == ("contrast", "gaussian_noise")
    assert parse_severities("1-5") == (1, 2, 3, 4, 5) and parse_severities("5,1,3") == (1, 3, 5)
    for bad, call in (("fog", parse_corruptions), ("0,3", parse_severities), ("6", parse_severities),
                      ("a", parse_severities)):
        with pytest.raises(FastCifarError) as info:
            call(bad)
        assert info.value.exit_code == 2


def test_evaluate_json_on_synthetic_data(tiny_model_dir, synthetic_dir, tmp_path):
    result = CliRunner().invoke(cli, ["evaluate", str(tiny_model_dir), "--data-dir", str(synthetic_dir), "--device",
                                      "cpu", "--corruptions", "gaussian_noise,contrast", "--severities", "1,5",
                                      "--max-images", "64", "--plots", str(tmp_path / "plots"), "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["n_test"] == 64 and r["backend"] == "torch" and r["precision"] == "fp32"
    assert {"accuracy", "nll", "brier", "ece", "reliability"} <= set(r["clean"])
    assert set(r["corruptions"]) == {"gaussian_noise", "contrast"} and r["severities"] == [1, 5]
    accs = [r["corruptions"][n][s]["accuracy"] for n in r["corruptions"] for s in ("1", "5")]
    assert r["mean_corruption_acc"] == pytest.approx(np.mean(accs))
    assert r["files"] == [str(tmp_path / "plots" / "reliability.png")] and (tmp_path / "plots" / "reliability.png").is_file()


def test_official_cifar10c_files_are_read_and_checked(tiny_model_dir, synthetic_dir, tmp_path):
    from fastcifar.data.synthetic import make_images

    c10c = tmp_path / "CIFAR-10-C"
    c10c.mkdir()
    labels = np.arange(50_000) % 10
    np.save(c10c / "labels.npy", labels.astype(np.uint8))
    images = np.broadcast_to(make_images(np.arange(10), np.random.default_rng(0))[labels[:10]], (5_000, 10, 32, 32, 3))
    np.save(c10c / "contrast.npy", np.ascontiguousarray(images).reshape(50_000, 32, 32, 3))
    args = ["evaluate", str(tiny_model_dir), "--data-dir", str(synthetic_dir), "--device", "cpu", "--max-images", "32",
            "--cifar10c", str(c10c), "--severities", "2", "--json"]
    result = CliRunner().invoke(cli, args + ["--corruptions", "contrast"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    # The same 32 test images as the clean row (CIFAR-10-C keeps the test order), not all 10,000 of the severity.
    assert r["corruptions"]["contrast"]["2"]["n"] == 32 and "CIFAR-10-C files" in r["source"]
    np.save(c10c / "brightness.npy", np.zeros((10, 32, 32, 3), np.uint8))
    bad = CliRunner().invoke(cli, args + ["--corruptions", "brightness"])
    assert bad.exit_code == 2 and "brightness.npy holds uint8 (10, 32, 32, 3)" in bad.output
    missing = CliRunner().invoke(cli, args + ["--corruptions", "pixelate"])
    assert missing.exit_code == 2 and "has no pixelate.npy" in missing.output


@pytest.mark.parametrize("args, message", [
    (["--corruptions", "fog"], "unknown corruption(s) fog"),
    (["--severities", "0-3"], "within 1-5"),
])
def test_bad_evaluate_options_exit_2(args, message, tiny_model_dir, synthetic_dir):
    result = CliRunner().invoke(cli, ["evaluate", str(tiny_model_dir), "--data-dir", str(synthetic_dir), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_a_model_that_cannot_load_exits_2(tmp_path):
    result = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "does not exist" in result.output
