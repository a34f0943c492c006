"""Reference tests every loader must pass: the tensor loader and the DALI pipeline, on small synthetic arrays.

Labels are the dataset indices (0..N-1), so the labels a loader yields say which images it served. Pixels
are checked against `reference_batch`, an independent numpy implementation of pad-crop-flip-normalise.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastcifar.data import loaders
from fastcifar.data.loaders import make_loader
from fastcifar.data.loader_contract import LoaderOptions, augment_params, epoch_plan, shard_indices
from fastcifar.errors import FastCifarError

KINDS = [
    "tensor",
    pytest.param("dali", marks=pytest.mark.skipif(not loaders.dali_available(), reason="NVIDIA DALI not installed")),
]
MEAN, STD = np.array(LoaderOptions.mean), np.array(LoaderOptions.std)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(203, 32, 32, 3), dtype=np.uint8)
    return images, np.arange(len(images))


def run_epoch(loader, epoch=0):
    loader.set_epoch(epoch)
    batches = list(loader)
    return torch.cat([x.float() for x, _ in batches]), torch.cat([y for _, y in batches]), batches


def reference_batch(images, order, dy, dx, flip, pad=4) -> torch.Tensor:
    """Zero-pad, crop at (dy, dx), flip, normalise - sample by sample in numpy; NCHW float32."""
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h, w = images.shape[1:3]
    crops = []
    for i, y0, x0, f in zip(order, dy, dx, flip):
        crop = padded[i, y0:y0 + h, x0:x0 + w]
        crops.append(crop[:, ::-1] if f else crop)
    out = (np.stack(crops).astype(np.float64) / 255 - MEAN) / STD
    return torch.from_numpy(out.astype(np.float32)).permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("train", [True, False])
def test_batches_have_the_contracted_shape_dtype_and_layout(kind, train, data):
    loader = make_loader(*data, LoaderOptions(batch_size=64, train=train), kind=kind)
    _, _, batches = run_epoch(loader)
    assert len(batches) == len(loader) == (203 // 64 if train else 4)
    for x, y in batches:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert y.dtype == torch.int64 and y.shape == (x.shape[0],)
    assert [len(y) for _, y in batches] == ([64] * 3 if train else [64, 64, 64, 11])


@pytest.mark.parametrize("kind", KINDS)
def test_eval_yields_every_image_once_in_order_normalised(kind, data):
    images, labels = data
    x, y, _ = run_epoch(make_loader(images, labels, LoaderOptions(batch_size=64, train=False), kind=kind))
    assert y.tolist() == labels.tolist()
    n = len(images)
    expected = reference_batch(images, np.arange(n), np.full(n, 4), np.full(n, 4), np.zeros(n, bool))
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)
    # Normalisation maps 0 and 255 to (0 - mean)/std and (1 - mean)/std per channel.
    low, high = (-MEAN / STD), ((1 - MEAN) / STD)
    for c in range(3):
        assert low[c] - 1e-5 <= x[:, c].min() and x[:, c].max() <= high[c] + 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_train_epoch_is_the_planned_crops_of_a_permutation(kind, data):
    images, labels = data
    options = LoaderOptions(batch_size=64, train=True, seed=3)
    x, y, _ = run_epoch(make_loader(images, labels, options, kind=kind), epoch=2)
    assert len(y) == 203 // 64 * 64 and len(set(y.tolist())) == len(y)
    assert y.tolist() == shard_indices(len(images), options, 2)[:len(y)].tolist()
    plan = epoch_plan(len(images), options, 2)
    torch.testing.assert_close(x, reference_batch(images, plan.order, plan.dy, plan.dx, plan.flip), atol=1e-5, rtol=0)
    assert plan.flip.any() and not plan.flip.all() and len(set(plan.dy.tolist())) > 1


@pytest.mark.parametrize("kind", KINDS)
def test_order_changes_with_epoch_and_repeats_for_the_same_seed(kind, data):
    options = LoaderOptions(batch_size=50, train=True, seed=7)
    loader = make_loader(*data, options, kind=kind)
    x0, y0, _ = run_epoch(loader, 0)
    x1, y1, _ = run_epoch(loader, 1)
    x0_again, y0_again, _ = run_epoch(make_loader(*data, options, kind=kind), 0)
    other_seed = run_epoch(make_loader(*data, LoaderOptions(batch_size=50, train=True, seed=8), kind=kind), 0)[1]
    assert not torch.equal(y0, y1) and not torch.equal(y0, other_seed)
    assert torch.equal(y0, y0_again) and torch.equal(x0, x0_again)


@pytest.mark.parametrize("kind", KINDS)
def test_stopping_or_abandoning_an_epoch_leaves_the_next_intact(kind, data):
    options = LoaderOptions(batch_size=32, train=True, seed=1)
    loader = make_loader(*data, options, kind=kind)
    loader.set_epoch(0)
    for _ in zip(range(2), loader):  # stop after two of six batches
        pass
    _, y, _ = run_epoch(loader, 1)
    assert y.tolist() == shard_indices(203, options, 1)[:6 * 32].tolist()
    abandoned = iter(loader)  # started, never finished nor closed
    next(abandoned)
    x2, y2, _ = run_epoch(loader, 2)
    assert y2.tolist() == shard_indices(203, options, 2)[:6 * 32].tolist()
    plan = epoch_plan(203, options, 2)
    torch.testing.assert_close(x2, reference_batch(data[0], plan.order, plan.dy, plan.dx, plan.flip), atol=1e-5,
                               rtol=0)


# ------------------------------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("kind", KINDS)
def test_train_shards_are_disjoint_and_equal_sized(kind, data):
    shards = [run_epoch(make_loader(*data, LoaderOptions(batch_size=25, train=True, rank=r, world_size=2),
                                    kind=kind), 4)[1].tolist() for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 101 // 25 * 25
    assert not set(shards[0]) & set(shards[1])


@pytest.mark.parametrize("kind", KINDS)
def test_eval_shards_cover_every_image_exactly_once(kind, data):
    shards = [run_epoch(make_loader(*data, LoaderOptions(batch_size=40, train=False, rank=r, world_size=3),
                                    kind=kind))[1].tolist() for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(203))


# ------------------------------------------------------------------------------------------------- augmentation


def test_augment_params_reach_all_81_offsets_and_flip_about_half():
    dy, dx, flip = augment_params(20_000, seed=0, epoch=0)
    assert set(zip(dy.tolist(), dx.tolist())) == {(a, b) for a in range(9) for b in range(9)}
    assert 0.45 < flip.mean() < 0.55
    again = augment_params(20_000, seed=0, epoch=0)
    assert all(np.array_equal(a, b) for a, b in zip((dy, dx, flip), again))
    assert not np.array_equal(dy, augment_params(20_000, seed=0, epoch=1)[0])
    no_flip = augment_params(20_000, seed=0, epoch=0, flip=False)
    assert not no_flip[2].any() and np.array_equal(no_flip[0], dy)  # crops unchanged by turning flips off
    assert not augment_params(100, seed=0, epoch=0, padding=0)[0].any()


def coordinate_image() -> np.ndarray:
    """One image whose pixel (r, c) holds (r + 1, c + 1, 200): zero in a channel can only be padding."""
    r, c = np.meshgrid(np.arange(1, 33), np.arange(1, 33), indexing="ij")
    return np.stack([r, c, np.full_like(r, 200)], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("kind", KINDS)
def test_pixels_show_every_crop_offset_flips_and_zero_padding(kind):
    images = np.repeat(coordinate_image()[None], 1024, axis=0)
    options = LoaderOptions(batch_size=256, train=True, seed=0)
    x, _, _ = run_epoch(make_loader(images, np.zeros(1024, dtype=np.int64), options, kind=kind))
    pixels = np.rint((x.permute(0, 2, 3, 1).numpy() * STD + MEAN) * 255).astype(int)  # back to 0-255
    flipped = pixels[:, 16, 17, 1] < pixels[:, 16, 16, 1]  # columns run backwards
    # The centre pixel is never padding: output (16, c) shows source row 16 + dy - 4.
    dy = pixels[:, 16, 16, 0] - 1 - 12
    dx = np.where(flipped, pixels[:, 16, 16, 1] - 1 - 11, pixels[:, 16, 16, 1] - 1 - 12)
    plan = epoch_plan(1024, options, 0)
    assert np.array_equal(dy, plan.dy) and np.array_equal(dx, plan.dx) and np.array_equal(flipped, plan.flip)
    assert set(zip(dy.tolist(), dx.tolist())) == {(a, b) for a in range(9) for b in range(9)}
    down = np.flatnonzero((dy == 0) & (dx == 4))[0]  # shifted down by 4: the top 4 rows are zero padding
    assert (pixels[down, :4] == 0).all() and (pixels[down, 4:, :, 2] == 200).all()


# ------------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize("kind", KINDS)
def test_resize_bf16_and_plain_nchw(kind, data):
    images, labels = data
    base = run_epoch(make_loader(images, labels, LoaderOptions(batch_size=64, train=True), kind=kind))[0]
    big = run_epoch(make_loader(images, labels, LoaderOptions(batch_size=64, train=True, image_size=64), kind=kind))
    assert big[0].shape[1:] == (3, 64, 64) and big[2][0][0].is_contiguous(memory_format=torch.channels_last)
    expected = F.interpolate(base, size=(64, 64), mode="bilinear", align_corners=False, antialias=False)
    torch.testing.assert_close(big[0], expected, atol=1e-4, rtol=0)
    half = run_epoch(make_loader(images, labels, LoaderOptions(batch_size=64, train=True, dtype="bfloat16"),
                                 kind=kind))
    assert half[2][0][0].dtype == torch.bfloat16
    torch.testing.assert_close(half[0], base, atol=0.02, rtol=0.01)  # bf16 keeps 8 bits of mantissa
    plain = run_epoch(make_loader(images, labels, LoaderOptions(batch_size=64, train=True, channels_last=False),
                                  kind=kind))
    assert plain[2][0][0].is_contiguous() and torch.equal(plain[0], base)


@pytest.mark.skipif(not loaders.dali_available(), reason="NVIDIA DALI not installed")
@pytest.mark.parametrize("image_size, padding, flip", [(32, 4, True), (64, 4, True), (24, 4, True), (32, 3, True),
                                                       (32, 0, False)])
def test_tensor_and_dali_loaders_give_the_same_pixels(image_size, padding, flip, data):
    images, labels = data
    options = LoaderOptions(batch_size=64, train=True, seed=5, image_size=image_size, crop_padding=padding,
                            flip=flip)
    xt, yt, _ = run_epoch(make_loader(images, labels, options, kind="tensor"), 3)
    xd, yd, _ = run_epoch(make_loader(images, labels, options, kind="dali"), 3)
    assert torch.equal(yt, yd)
    # Crop/flip/normalise agree to float rounding; resize weights are computed differently (~1e-5 apart).
    torch.testing.assert_close(xd, xt, atol=1e-5 if image_size == 32 else 1e-4, rtol=0)
    if image_size == 32:  # and both are the numpy reference, whatever the padding
        plan = epoch_plan(len(images), options, 3)
        expected = reference_batch(images, plan.order, plan.dy, plan.dx, plan.flip, pad=padding)
        torch.testing.assert_close(xt, expected, atol=1e-5, rtol=0)


def test_dali_requested_without_dali_is_a_user_error(monkeypatch, data):
    monkeypatch.setattr(loaders, "dali_available", lambda: False)
    with pytest.raises(FastCifarError, match="DALI"):
        make_loader(*data, LoaderOptions(batch_size=8, train=True), kind="dali")
    auto = make_loader(*data, LoaderOptions(batch_size=8, train=True), kind="auto", device="cpu")
    assert type(auto).__name__ == "TensorLoader"


@pytest.mark.parametrize("bad", [dict(batch_size=0), dict(rank=2, world_size=2), dict(dtype="int8"),
                                 dict(image_size=0), dict(crop_padding=-1), dict(seed=-1), dict(std=(0.2, 0.0, 0.2))])
def test_bad_options_are_user_errors(bad):
    with pytest.raises(FastCifarError):
        LoaderOptions(**{"batch_size": 8, "train": True, **bad})


def test_bad_data_and_kind_are_user_errors(data):
    images, labels = data
    options = LoaderOptions(batch_size=8, train=True)
    cases = [
        dict(images=images.astype(np.float32), labels=labels, options=options),
        dict(images=images[..., 0], labels=labels, options=options),
        dict(images=images, labels=labels[:-1], options=options),
        dict(images=images, labels=labels, options=LoaderOptions(batch_size=500, train=True)),
        dict(images=images, labels=labels, options=options, kind="pillow"),
    ]
    for case in cases:
        with pytest.raises(FastCifarError):
            make_loader(**case)


# ------------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_loader_matches_cpu(kind, data):
    options = LoaderOptions(batch_size=64, train=True, seed=2, image_size=64)
    xc, yc, _ = run_epoch(make_loader(*data, options, kind="tensor"), 1)
    xg, yg, batches = run_epoch(make_loader(*data, options, kind=kind, device="cuda"), 1)
    assert batches[0][0].is_cuda and batches[0][1].is_cuda
    assert batches[0][0].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(yg.cpu(), yc)
    torch.testing.assert_close(xg.cpu(), xc, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------------- bench


def test_loader_bench_runs_end_to_end(synthetic_dir, tmp_path):
    script = Path(__file__).resolve().parents[1] / "bench" / "loaders.py"
    spec = importlib.util.spec_from_file_location("bench_loaders", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "loaders.json"
    assert bench.main(["--data-dir", str(synthetic_dir), "--batch-size", "64", "--epochs", "2", "--workers", "0",
                       "--device", "cpu", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    kinds = {"tensor", "dataloader"} | ({"dali"} if loaders.dali_available() else set())
    assert set(record["results"]) == kinds and record["images"] == 500 and record["device"] == "cpu"
    for result in record["results"].values():
        assert len(result["img_per_s_epochs"]) == 2 and result["img_per_s_median"] > 0
    assert record["results"]["dataloader"]["x_dataloader"] == 1.0
    with pytest.raises(FastCifarError):
        bench.main(["--data-dir", str(synthetic_dir), "--epochs", "0"])


def test_dali_on_cuda_runs_on_torchs_current_stream(monkeypatch):
    """DALI 2.4's run() without a stream is host-synchronous; on CUDA the loader passes torch's current stream."""
    import torch

    from fastcifar.data.dali_loader import DaliLoader

    class Pipe:
        def __init__(self):
            self.calls = []

        def run(self, *args):
            self.calls.append(args)
            return ("batch",)

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: type("S", (), {"cuda_stream": 77})())
    loader = DaliLoader.__new__(DaliLoader)  # only the stepping logic: no pipeline build, no GPU
    loader._pipe, loader.device = Pipe(), torch.device("cuda", 0)
    assert loader._run() == ("batch",) and loader._pipe.calls == [(77,)]
    loader.device = torch.device("cpu")
    loader._run()
    assert loader._pipe.calls[-1] == ()  # the CPU pipeline takes no stream
