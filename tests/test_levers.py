"""The training levers of issue 18 (train/levers.py and where each acts), each tested for what it must do on the CPU,
plus the defaults that changed with them: `--loader auto` and DALI's failure message, the state.pt cadence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fastcifar.config import TrainConfig
from fastcifar.data import loaders
from fastcifar.data.loaders import make_loader
from fastcifar.data.loader_contract import LoaderOptions, augment_params, epoch_plan
from fastcifar.errors import FastCifarError
from fastcifar.train.tta import evaluate, tta_logits
from fastcifar.train.levers import (DeviceEMA, batchnorm_bias_ids, freeze_batchnorm_scales, patch_second_moment,
                                    whiten_first_conv, whitening_filters)
from fastcifar.train.loop import train
from fastcifar.train.step import lr_lambda, param_groups


def small_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))


# ---------------------------------------------------------------------------------------------- EMA


def test_device_ema_every_k_steps_matches_a_reference_average():
    net = small_net()
    decay, every, start = 0.9, 3, 4
    ema = DeviceEMA(net, decay, every=every, start_step=start)
    reference = None
    for step in range(1, 20):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net[1].running_mean.add_(1.0)
            net[1].num_batches_tracked += 1
        ema.update(step)
        live = {k: v.clone() for k, v in net.state_dict().items()}
        if step >= start and step % every == 0:
            if reference is None:
                reference = live  # the first due update copies
            else:  # the textbook EMA with the decay of `every` steps
                w = decay ** every
                reference = {k: (w * reference[k] + (1 - w) * live[k]) if v.is_floating_point() else live[k]
                             for k, v in live.items()}
    assert ema.updates == len([s for s in range(1, 20) if s >= start and s % every == 0]) == 5
    for key, value in ema.module.state_dict().items():
        torch.testing.assert_close(value, reference[key], rtol=1e-5, atol=1e-6)
    assert ema.module.state_dict()["1.num_batches_tracked"] == 18  # integers copied at the last update (step 18)
    assert not any(p.requires_grad for p in ema.module.parameters())
    restored = DeviceEMA(small_net(), decay, every=every)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 5 and all(torch.equal(a, b) for a, b in zip(restored.module.state_dict().values(),
                                                                            ema.module.state_dict().values()))


def test_device_ema_refuses_bad_settings():
    with pytest.raises(ValueError):
        DeviceEMA(small_net(), 1.0)
    with pytest.raises(ValueError):
        DeviceEMA(small_net(), 0.9, every=0)


# ---------------------------------------------------------------------------------------------- whitening


def correlated_images(n=64, size=16, seed=0):
    """Smooth, channel-correlated images: neighbouring pixels and channels share most of their value."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, size // 4, size // 4, generator=g)
    base = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    return torch.cat([base + 0.1 * c + 0.2 * torch.randn(n, 1, size, size, generator=g) for c in range(3)], 1)


def test_whitening_filters_give_identity_covariance_on_training_patches():
    images = correlated_images()
    before = patch_second_moment(images, 3)
    off = before - torch.diag(torch.diag(before))
    assert off.abs().max() > 0.5  # the input patches are strongly correlated
    filters = whitening_filters(images, 3, eps=1e-12)
    assert filters.shape == (27, 3, 3, 3)
    out = torch.nn.functional.conv2d(images.double(), filters)  # every output is one patch's projection
    moment = patch_second_moment(out, 1)
    torch.testing.assert_close(moment, torch.eye(27, dtype=torch.float64), atol=1e-6, rtol=0)
    # With the default eps the large directions are still white and the layer stays decorrelating.
    out = torch.nn.functional.conv2d(images.double(), whitening_filters(images, 3))
    moment = patch_second_moment(out, 1)
    assert (moment - torch.diag(torch.diag(moment))).abs().max() < 1e-6
    assert torch.diag(moment)[:5].min() > 0.99


def test_whiten_first_conv_fills_every_filter_and_freezes_it():
    from fastcifar.models import build_resnet

    model = build_resnet("resnet18", "cifar", 10)
    images = correlated_images(n=32, size=32)
    assert whiten_first_conv(model, images) == 27
    weight = model.conv1.weight
    assert not weight.requires_grad and weight.shape[0] == 64
    torch.testing.assert_close(weight[27:54], -weight[:27])  # both signs of every direction
    torch.testing.assert_close(weight[54:], weight[:10])
    assert all(p is not weight for g in param_groups(model, 5e-4) for p in g["params"])  # the optimizer never sees it


# ---------------------------------------------------------------------------------------------- BatchNorm, lr


def test_frozen_bn_scales_and_bias_lr_multiplier():
    from fastcifar.models import build_resnet

    model = build_resnet("resnet18", "cifar", 10)
    assert freeze_batchnorm_scales(model) == 20
    groups = param_groups(model, 5e-4, lr=0.4, bn_bias_lr_scale=64.0)
    assert len(groups) == 3
    bn_bias = batchnorm_bias_ids(model)
    decay, rest, biases = groups
    assert {id(p) for p in biases["params"]} == bn_bias and biases["lr"] == pytest.approx(0.4 * 64)
    assert biases["weight_decay"] == 0 and rest["lr"] == decay["lr"] == 0.4
    assert not any(id(p) in bn_bias for p in rest["params"])  # the classifier bias stays in the plain group
    trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups) == trainable
    assert len(param_groups(model, 5e-4, lr=0.4)) == 2  # the historical layout when the multiplier is 1


def test_lr_decays_to_its_floor():
    assert lr_lambda(10, warmup=4, total=10, schedule="linear", floor=0.07) == pytest.approx(0.07)
    assert lr_lambda(7, warmup=4, total=10, schedule="linear", floor=0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_lambda(3, warmup=4, total=10, schedule="cosine", floor=0.5) == pytest.approx(1.0)


def test_lever_options_are_validated():
    for bad, word in [(dict(whiten_stem=True, init="imagenet"), "random init"),
                      (dict(bn_freeze_scales=True, zero_init_residual=True), "choose one"),
                      (dict(bn_bias_lr_scale=0), "bn-bias-lr-scale"), (dict(lr_floor=1.0), "lr-floor"),
                      (dict(ema_every=0), "ema-every"), (dict(save_state_every=-1), "save-state-every"),
                      (dict(seed=-1), "--seed"), (dict(lr=float("inf")), "--lr"), (dict(weight_decay=-1), "weight")]:
        with pytest.raises(FastCifarError, match=word):
            TrainConfig(**bad)


# ---------------------------------------------------------------------------------------------- flips, TTA


def test_alternating_flip_alternates_each_image_and_keeps_the_crops():
    n = 500
    flips = [augment_params(n, 3, e, alternating_flip=True)[2] for e in range(4)]
    assert 0.3 < flips[0].mean() < 0.7  # epoch 0: random flips
    assert (flips[1] == ~flips[0]).all() and (flips[2] == flips[0]).all() and (flips[3] == ~flips[0]).all()
    plain = augment_params(n, 3, 2)
    alt = augment_params(n, 3, 2, alternating_flip=True)
    assert (plain[0] == alt[0]).all() and (plain[1] == alt[1]).all()  # same crops as without it
    assert not augment_params(n, 3, 1, flip=False, alternating_flip=True)[2].any()
    random_pairs = np.mean([(augment_params(n, 3, e)[2] == augment_params(n, 3, e + 1)[2]).mean() for e in range(3)])
    assert 0.35 < random_pairs < 0.65  # random flips repeat the view about half the time; alternating never


@pytest.mark.parametrize("kind", ["tensor", pytest.param("dali", marks=pytest.mark.skipif(
    not loaders.dali_available(), reason="NVIDIA DALI not installed"))])
def test_alternating_flip_is_followed_by_both_loaders(kind):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(96, 32, 32, 3), dtype=np.uint8)
    options = LoaderOptions(batch_size=32, train=True, seed=5, alternating_flip=True)
    loader = make_loader(images, np.arange(96), options, kind=kind)
    reference = make_loader(images, np.arange(96), options, kind="tensor")
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        reference.set_epoch(epoch)
        got = torch.cat([x for x, _ in loader])
        want = torch.cat([x for x, _ in reference])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    plan0, plan1 = epoch_plan(96, options, 0), epoch_plan(96, options, 1)
    flips0 = dict(zip(plan0.order.tolist(), plan0.flip.tolist()))
    assert all(flips0[i] != f for i, f in zip(plan1.order.tolist(), plan1.flip.tolist()))


def test_translate_tta_changes_nothing_for_a_translation_invariant_input():
    net = small_net().eval()
    constant = torch.full((4, 3, 8, 8), 0.3)  # shifting a constant image (reflect padding) gives the same image
    with torch.no_grad():
        plain = tta_logits(net, constant, flip=True, translate=False)
        translated = tta_logits(net, constant, flip=True, translate=True)
    torch.testing.assert_close(translated, plain)
    images = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(tta_logits(net, images, flip=True, translate=True),
                                  tta_logits(net, images, flip=True, translate=False))
    loader = [(images, torch.tensor([0, 1, 2, 0]))]
    result = evaluate(net, loader, tta=True, translate=True)
    assert result.n == 4 and 0 <= result.acc <= 1


# ---------------------------------------------------------------------------------------------- defaults


def test_auto_loader_is_the_tensor_loader_even_on_cuda(monkeypatch):
    created = []
    monkeypatch.setattr(loaders, "_tensor_loader", lambda *a: created.append("tensor") or "T")
    monkeypatch.setattr(loaders, "_dali_loader", lambda *a: created.append("dali") or "D")
    monkeypatch.setattr(loaders, "dali_available", lambda: True)
    images = np.zeros((8, 32, 32, 3), np.uint8)
    assert make_loader(images, np.arange(8), LoaderOptions(batch_size=4, train=True), kind="auto",
                       device="cuda") == "T"
    assert make_loader(images, np.arange(8), LoaderOptions(batch_size=4, train=True), kind="dali",
                       device="cuda") == "D"
    assert created == ["tensor", "dali"]


def test_a_dali_failure_names_the_tensor_loader(monkeypatch):
    from fastcifar.data import dali_loader

    def broken(self):
        raise RuntimeError("nvml error: no CUDA-capable device\nmore detail")

    monkeypatch.setattr(dali_loader.DaliLoader, "_build", broken)
    with pytest.raises(FastCifarError, match="--loader tensor") as info:
        dali_loader.DaliLoader(np.zeros((8, 32, 32, 3), np.uint8), np.arange(8), LoaderOptions(batch_size=4,
                                                                                                 train=True))
    assert "RuntimeError: nvml error" in str(info.value) and "more detail" not in str(info.value)


def tiny(data_dir, out, **kw):
    base = dict(data_dir=str(data_dir), out=str(out), stem="imagenet", epochs=3, batch_size=32, lr=0.05,
                warmup_epochs=0.5, device="cpu", loader="tensor", download=False, train_limit=300)
    return TrainConfig(**{**base, **kw})


def test_a_run_with_every_lever_learns_and_records_them(tmp_path, synthetic_dir):
    # 5 epochs of 400 images (~60 steps): shorter runs with a whitened stem stay at chance on held-out data while the
    # training accuracy climbs - BatchNorm's running statistics lag the fast-moving activations (airbench pairs its
    # whitening with BN momentum 0.4).
    cfg = tiny(synthetic_dir, tmp_path / "levers", epochs=5, train_limit=400, ema=0.8, ema_every=2, whiten_stem=True,
               bn_freeze_scales=True, bn_bias_lr_scale=4.0, alternating_flip=True, tta_translate=True, lr_floor=0.1,
               label_smoothing=0.2, save_state_every=2)
    summary = train(cfg, progress=False, keep_state=True).summary
    assert summary["test_acc"] > 0.5  # learnable synthetic data: chance is 0.1 (measured here: 0.925)
    assert len(summary["levers"]) == 8 and any("whitened stem" in lever for lever in summary["levers"])
    assert summary["state_save_seconds"] > 0 and summary["cudnn_benchmark"] is None  # CPU: not a cuDNN run
    state = torch.load(tmp_path / "levers" / "state.pt", weights_only=True)
    assert state["epoch"] == 5 and state["ema"]["updates"] > 0  # the last epoch is always saved


def test_state_every_n_epochs_resumes_from_the_last_saved_one(tmp_path, synthetic_dir, monkeypatch):
    from fastcifar.rundir import RunDir
    from fastcifar.train.loop import resume

    saved = []
    real_save = RunDir.save_state
    monkeypatch.setattr(RunDir, "save_state", lambda self, state: saved.append(state["epoch"]) or real_save(self, state))

    def stop_after_third(epoch, metrics):
        if epoch == 3:
            raise KeyboardInterrupt

    run = tmp_path / "every2"
    with pytest.raises(FastCifarError, match="--resume"):
        train(tiny(synthetic_dir, run, epochs=4, save_state_every=2), progress=False, on_epoch_end=stop_after_third)
    assert saved == [0, 2]  # the first moment, then every second epoch: epoch 3 was not saved
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    finished = resume(run, progress=False)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4]  # epoch 3 trained again, its stale line replaced
    assert saved == [0, 2, 4] and finished.summary["epochs"] == 4


def test_no_state_at_all_says_so_on_interrupt(tmp_path, synthetic_dir, monkeypatch):
    from fastcifar.train import loop

    def interrupt(session, epoch, advance):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train_one_epoch", interrupt)
    with pytest.raises(FastCifarError, match="no state to resume"):
        train(tiny(synthetic_dir, tmp_path / "none", save_state_every=0), progress=False)
    assert not (tmp_path / "none" / "state.pt").exists()


def test_patch_moment_in_chunks_equals_the_whole_computation():
    images = correlated_images(n=50, size=12)
    patches = torch.nn.functional.unfold(images.double(), 3).transpose(1, 2).reshape(-1, 27)
    torch.testing.assert_close(patch_second_moment(images, 3), patches.T @ patches / len(patches))


def test_the_imagenet_stem_gets_its_leading_directions_and_their_negatives():
    from fastcifar.models import build_resnet

    model = build_resnet("resnet18", "imagenet", 10)
    assert whiten_first_conv(model, correlated_images(n=8, size=32)) == 147
    weight = model.conv1.weight
    torch.testing.assert_close(weight[32:], -weight[:32])


def test_an_ema_state_saved_by_torchs_averaged_model_still_resumes():
    net = small_net()
    old = {**{f"module.{k}": v + 1 for k, v in net.state_dict().items()}, "n_averaged": torch.tensor(7)}
    ema = DeviceEMA(net, 0.9)
    ema.load_state_dict(old)
    assert ema.updates == 7 and torch.equal(ema.module[0].weight, net[0].weight + 1)
    with pytest.raises(FastCifarError, match="not one fastcifar can read"):
        ema.load_state_dict({"something": 1})
