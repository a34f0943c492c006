"""Augmentation is a per-run choice: flips and the crop can be switched off in every loader, flip TTA follows the
training flips unless told otherwise, and config.json, model.json, summary.json and the report record which.

The case that asked for it: a folder of mirror pairs (a bar on the left vs the same image mirrored) can only be
learned without flips; with them (and flip TTA) a model cannot tell the two classes apart.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fastcifar.config import TrainConfig, make_train_config
from fastcifar.data.loader_contract import LoaderOptions, epoch_plan
from fastcifar.errors import FastCifarError


def mirror_pairs(n: int, seed: int) -> np.ndarray:
    """n noisy 32 px images with a bright bar in their left third; their mirror images are the other class."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 120, size=(n, 32, 32, 3), dtype=np.uint8)
    cols = rng.integers(1, 9, size=n)
    for image, col in zip(images, cols):
        image[4:28, col:col + 3] = 250
    return images


def write_mirror_folder(root: Path, per_class_train: int = 300, per_class_test: int = 100) -> Path:
    from PIL import Image

    for split, n, seed in (("train", per_class_train, 0), ("test", per_class_test, 1)):
        left = mirror_pairs(n, seed)
        for name, images in (("left", left), ("right", left[:, :, ::-1])):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i, pixels in enumerate(images):
                Image.fromarray(np.ascontiguousarray(pixels)).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def mirror_folder(tmp_path_factory):
    return write_mirror_folder(tmp_path_factory.mktemp("mirror") / "pairs")


def train_on(folder: Path, out: Path, monkeypatch, **overrides):
    from fastcifar.train import train

    monkeypatch.setenv("FASTCIFAR_CACHE", str(out.parent / "cache"))
    cfg = make_train_config("smoke", {"data_dir": str(folder), "device": "cpu", "out": str(out), "epochs": 3,
                                      "batch_size": 32, "save_state_every": 0, **overrides})
    return train(cfg, progress=False)


@pytest.mark.slow
def test_mirror_pairs_are_learned_without_flips_and_not_with_them(mirror_folder, tmp_path, monkeypatch):
    off = train_on(mirror_folder, tmp_path / "no-flip", monkeypatch, flip=False)
    on = train_on(mirror_folder, tmp_path / "flip", monkeypatch)
    assert off.summary["test_acc"] >= 0.9, off.summary["test_acc"]  # the one-line change measured 100 %
    assert 0.4 <= on.summary["test_acc"] <= 0.6, on.summary["test_acc"]  # chance: the classes are each other's flips
    # What each run did is on record: config.json, model.json, summary.json.
    for result, flip in ((off, False), (on, True)):
        config = json.loads((result.run_dir / "config.json").read_text())
        model = json.loads((result.run_dir / "model.json").read_text())
        assert config["flip"] is flip and config["tta"] is flip  # flip TTA followed the training flips
        assert model["augmentation"]["flip"] is flip and model["augmentation"]["tta"] is flip
        assert result.summary["augmentation"] == model["augmentation"]


@pytest.mark.slow
def test_flip_tta_can_be_asked_for_apart_from_the_training_flips(mirror_folder, tmp_path, monkeypatch):
    result = train_on(mirror_folder, tmp_path / "run", monkeypatch, flip=False, tta=True, epochs=2)
    assert result.summary["augmentation"]["tta"] is True and result.summary["augmentation"]["flip"] is False
    assert result.summary["test_acc"] <= 0.6  # averaging a mirror pair's views erases the one difference


def test_every_loader_follows_the_flip_and_crop_choice():
    n = 64
    flipped = epoch_plan(n, LoaderOptions(batch_size=8, train=True, seed=3), epoch=0)
    plain = epoch_plan(n, LoaderOptions(batch_size=8, train=True, seed=3, flip=False, crop_padding=0), epoch=0)
    assert flipped.flip.any() and not plain.flip.any()
    assert flipped.dy.max() > 0 and not plain.dy.any() and not plain.dx.any()  # padding 0: the image as it is
    assert (plain.order == flipped.order).all()  # the shuffle does not depend on the augmentation


def test_the_tensor_loader_without_augmentation_yields_the_images_as_they_are():
    import torch

    from fastcifar.data.loaders import make_loader

    images = np.random.default_rng(0).integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
    options = LoaderOptions(batch_size=16, train=True, seed=0, flip=False, crop_padding=0, channels_last=False,
                            mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    loader = make_loader(images, np.arange(16), options, kind="tensor", device="cpu")
    x, y = next(iter(loader))
    expected = torch.from_numpy(images[y.numpy()]).permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(x, expected, atol=1e-6)


def test_augmentation_options_are_checked():
    with pytest.raises(FastCifarError, match="--crop-padding"):
        TrainConfig(crop_padding=-1)
    with pytest.raises(FastCifarError, match="--crop-scale"):
        TrainConfig(crop_scale=0.0)
    with pytest.raises(FastCifarError, match="drop --no-flip"):
        TrainConfig(flip=False, alternating_flip=True)
    assert TrainConfig(flip=False).resolved("cpu").tta is False and TrainConfig().resolved("cpu").tta is True
    assert TrainConfig(flip=False, tta=True).resolved("cpu").tta is True


def test_the_report_says_how_the_images_were_augmented():
    from fastcifar.config import describe_augmentation

    assert describe_augmentation(TrainConfig().augmentation()) == \
        "random 4-px-padded crops and horizontal flips in training; flip TTA at evaluation"
    assert describe_augmentation(TrainConfig(flip=False, crop_padding=0).augmentation()) == \
        "no random crop and no flips in training; no flip TTA at evaluation"
    assert "35-100 % of the area" in describe_augmentation(TrainConfig(loader="dali-files").augmentation())
