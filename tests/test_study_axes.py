"""The study beyond one gap: the linear-probe arm, the scratch arm's longer schedules, label noise, paired statistics
and what pretraining is worth in labelled images - one study with every axis on EfficientNet-Lite0's real ImageNet
weights, and the pieces it is made of."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from fastcifar.cli import cli
from fastcifar.config import CompareConfig, TrainConfig, make_compare_config
from fastcifar.data.label_noise import noisy_labels
from fastcifar.errors import FastCifarError
from fastcifar.study import axes
from fastcifar.study import run_plan as plan
from fastcifar.study.compare import budget_steps
from fastcifar.study.plots import PLOTS

AXES = ["--arms", "finetune,linear-probe,scratch", "--scratch-epochs", "1,2", "--label-noise", "0,0.4"]


def study_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    """2 seeds x 2 fractions x (fine-tune, probe, scratch, scratch 2x epochs on clean labels; the three arms at 40 %
    label noise): 28 one-epoch runs of EfficientNet-Lite0 at 64 px on 27 or 54 synthetic training images."""
    return ["compare", "--arch", "efficientnet_lite0", "--data-dir", str(data_dir), "--no-download", "--device", "cpu",
            "--loader", "tensor", "--preset", "smoke", "--train-limit", "60", "--epochs", "1", "--lr", "0.05",
            "--seeds", "2", "--fractions", "0.5,1.0", "--robustness-severities", "1", "--out", str(out), *AXES,
            *extra]


@pytest.fixture(scope="module")
def study(tmp_path_factory, synthetic_dir):
    out = tmp_path_factory.mktemp("axes") / "report"
    result = CliRunner().invoke(cli, study_args(synthetic_dir, out, "--json"))
    assert result.exit_code == 0, result.output
    return {"out": out, "results": json.loads(result.stdout.strip().splitlines()[-1]), "output": result.output}


def _summary(out: Path, name: str) -> dict:
    folder = "runs" if (out / "runs" / name).is_dir() else "lr-select"
    return json.loads((out / folder / name / "summary.json").read_text())


@pytest.mark.slow
def test_a_study_with_every_axis_on_real_weights(study, synthetic_dir):
    out, results = study["out"], study["results"]
    names = {p.name for p in (out / "runs").iterdir()}
    expected = {plan.run_name(init, f, s, epochs_x=k, noise=n) for s in (0, 1) for f in (0.5, 1.0)
                for init, k, n in [("imagenet", 1, 0.0), ("probe", 1, 0.0), ("random", 1, 0.0), ("random", 2, 0.0),
                                   ("imagenet", 1, 0.4), ("probe", 1, 0.4), ("random", 1, 0.4)]}
    assert names == expected
    assert {p.name for p in out.iterdir()} >= set(PLOTS) | {"report.md", "results.json"}
    # the main tables hold the clean study at the preset's schedule, with the probe as a third arm
    section = results["sections"][0]
    assert section["inits"] == ["imagenet", "probe", "random"]
    assert {(r["init"], r["fraction"]) for r in section["summary"]} == {
        (i, f) for i in ("imagenet", "probe", "random") for f in (0.5, 1.0)}
    assert all(r["n_seeds"] == 2 for r in section["summary"])
    # every (series, noise, fraction) has its row, with calibration (clean test images) for the noisy runs too
    study_block = results["study"]
    assert {(r["series"], r["noise"], r["fraction"]) for r in study_block["rows"]} == {
        (s, n, f) for f in (0.5, 1.0) for s, n in [("imagenet", 0), ("probe", 0), ("random", 0), ("random-x2", 0),
                                                   ("imagenet", 0.4), ("probe", 0.4), ("random", 0.4)]}
    assert all(r["ece_mean"] is not None for r in study_block["rows"])
    # both arms of a seed saw the same data: the gaps' paired intervals are there
    accuracy_gaps = [g for g in study_block["gaps"] if g["metric"] == "test_acc"]
    assert accuracy_gaps and all(g["pairing"] == "verified" and g["paired"]["n_pairs"] == 2 for g in accuracy_gaps)
    assert {(g["a"], g["b"]) for g in accuracy_gaps if g["noise"] == 0} == {
        ("imagenet", "random"), ("imagenet", "random-x2"), ("probe", "random"), ("probe", "random-x2"),
        ("imagenet", "probe")}
    assert all(g["interval"] == "paired" for g in results["gaps"])
    # the labelled-image multiple, per pretrained arm, noise level and fraction, within the measured range
    worth = study_block["worth"]
    assert {(w["pretrained"], w["noise"], w["fraction"]) for w in worth} == {
        (p, n, f) for p in ("imagenet", "probe") for n in (0.0, 0.4) for f in (0.5, 1.0)}
    for w in worth:
        assert w["relation"] in ("=", ">", "<=")
        assert min(w["scratch_sizes"]) <= w["images"] <= max(w["scratch_sizes"])
    report = (out / "report.md").read_text()
    for phrase in ("### Beyond two arms", "What pretraining is worth in labelled images", "label noise",
                   "linear probe (ImageNet features, frozen)", "paired over seeds"):
        assert phrase in report, phrase
    assert "worth" in results["conclusion"] and "40 % label noise" in results["conclusion"]


@pytest.mark.slow
def test_the_probe_trains_only_the_classifier_and_bn_stays_in_eval_mode(study):
    """Every backbone tensor of a probe's saved model - BatchNorm running statistics included - is the ImageNet
    checkpoint's; the classifier moved."""
    from fastcifar.models import create_model

    reference, _ = create_model("efficientnet_lite0", "imagenet", "imagenet", image_size=64)
    start = reference.state_dict()
    probe = load_file(str(study["out"] / "runs" / "probe-f1-s0" / "model.safetensors"))
    backbone = [k for k in start if not k.startswith("classifier.")]
    assert backbone and all(torch.equal(probe[k], start[k]) for k in backbone)
    assert any(k.endswith("running_mean") for k in backbone)
    finetuned = load_file(str(study["out"] / "runs" / "imagenet-f1-s0" / "model.safetensors"))
    assert not all(torch.equal(finetuned[k], start[k]) for k in backbone)  # fine-tuning did move the backbone
    summary = _summary(study["out"], "probe-f1-s0")
    assert summary["linear_probe"] and summary["data_stream"]["augmented"] is False


@pytest.mark.slow
def test_the_arms_of_a_seed_see_the_same_subset_order_and_augmentation(study):
    out = study["out"]
    ft, scratch, longer = (_summary(out, n)["data_stream"] for n in ("imagenet-f1-s0", "random-f1-s0",
                                                                     "random-f1-s0-x2"))
    assert ft == scratch
    assert longer["subset"] == ft["subset"] and longer["epochs"][:1] == ft["epochs"] and len(longer["epochs"]) == 2
    probe = _summary(out, "probe-f1-s0")["data_stream"]
    assert probe["subset"] == ft["subset"]
    assert _summary(out, "imagenet-f1-s1")["data_stream"]["subset"] != ft["subset"]  # another seed, another split
    noisy = _summary(out, "random-f1-s0-n0.4")
    assert noisy["noisy_labels"] == round(0.4 * 60) and noisy["data_stream"]["subset"] != ft["subset"]
    assert noisy["data_stream"]["subset"] == _summary(out, "imagenet-f1-s0-n0.4")["data_stream"]["subset"]
    assert noisy["n_test"] == _summary(out, "random-f1-s0")["n_test"]  # the test set is the clean one


@pytest.mark.slow
def test_rerunning_the_study_retrains_nothing(study, synthetic_dir):
    before = {p.name: (p / "summary.json").stat().st_mtime_ns for p in (study["out"] / "runs").iterdir()}
    result = CliRunner().invoke(cli, study_args(synthetic_dir, study["out"]))
    assert result.exit_code == 0, result.output
    assert "28 already finished" in result.output
    assert before == {p.name: (p / "summary.json").stat().st_mtime_ns for p in (study["out"] / "runs").iterdir()}


# ---------------------------------------------------------------------------------------------- the pieces


def test_label_noise_replaces_exactly_the_rate_with_other_classes_seeded():
    labels = np.random.default_rng(0).integers(0, 10, 1000)
    noisy, flipped = noisy_labels(labels, 0.4, seed=3, num_classes=10)
    assert len(flipped) == 400 and (noisy != labels).sum() == 400  # every replaced label is another class
    assert np.array_equal(np.flatnonzero(noisy != labels), flipped)
    again, _ = noisy_labels(labels, 0.4, seed=3, num_classes=10)
    other, _ = noisy_labels(labels, 0.4, seed=4, num_classes=10)
    assert np.array_equal(noisy, again) and not np.array_equal(noisy, other)
    offsets = (noisy[flipped] - labels[flipped]) % 10  # symmetric: every other class about equally often
    assert set(offsets) == set(range(1, 10)) and np.bincount(offsets)[1:].min() > 20
    assert noisy_labels(labels, 0.0, 3, 10)[0] is labels


def test_the_plan_adds_each_axis_where_it_belongs():
    base = TrainConfig(arch="efficientnet_lite0", stem="imagenet", image_size=64, epochs=2, batch_size=32,
                       train_limit=200, device="cpu")
    cfg = CompareConfig(base=base, seeds=(0,), fractions=(1.0,), arms=("finetune", "linear-probe", "scratch"),
                        scratch_epochs=(1, 3), label_noise=(0.0, 0.2), out="r")
    runs = {r.name: r for r in plan.plan_runs(cfg, 1000, "imagenet")}
    assert set(runs) == {"imagenet-f1-s0", "probe-f1-s0", "random-f1-s0", "random-f1-s0-x3", "imagenet-f1-s0-n0.2",
                         "probe-f1-s0-n0.2", "random-f1-s0-n0.2"}
    assert runs["random-f1-s0-x3"].cfg.epochs == 6 and runs["random-f1-s0-x3"].cfg.init == "random"
    assert runs["random-f1-s0-x3"].cfg.warmup_epochs == pytest.approx(3 * base.warmup_epochs)
    probe = runs["probe-f1-s0"].cfg
    assert probe.linear_probe and probe.init == "imagenet" and probe.epochs == 2
    assert runs["imagenet-f1-s0-n0.2"].cfg.label_noise == 0.2 and not runs["imagenet-f1-s0"].cfg.label_noise
    # every arm shares the seed's data options: the same batch, split and augmentation
    assert len({(r.cfg.batch_size, r.cfg.train_limit, r.cfg.seed, r.cfg.crop_padding) for r in runs.values()}) == 1
    selection = plan.plan_selection(replace_grid(cfg), 1000, "imagenet")
    assert {r.init for r in selection} == {"imagenet", "probe", "random"} and all(r.core for r in selection)


def replace_grid(cfg: CompareConfig) -> CompareConfig:
    from dataclasses import replace

    return replace(cfg, lr_grid=(0.01, 0.02))


def test_a_budget_drops_noise_levels_then_longer_schedules_in_that_order():
    base = TrainConfig(device="cpu")
    cfg = CompareConfig(base=base, scratch_epochs=(1, 2, 3), label_noise=(0.0, 0.2, 0.4), out="r")
    steps = budget_steps(cfg)
    assert [s[1][-1] if s[1] else None for s in steps] == [
        None, "label noise 0.2", "label noise 0.4", "scratch at 3x epochs", "scratch at 2x epochs"]
    assert steps[-1][0].label_noise == (0.0,) and steps[-1][0].scratch_epochs == (1,)
    assert steps[2][0].scratch_epochs == (1, 2, 3)  # noise goes first


def test_a_two_arm_study_keeps_its_config_and_fingerprint():
    """The axes stay out of compare.json until used: an earlier report and its default directory read the same."""
    cfg = make_compare_config("seed", {})
    assert not {"arms", "scratch_epochs", "label_noise"} & set(cfg.to_dict())
    assert not {"linear_probe", "label_noise"} & set(cfg.base.to_dict())
    assert cfg.out == "reports/resnet18-seed-d47900a0"  # the name it had before the axes came
    wider = make_compare_config("seed", {}, arms="scratch,linear-probe", label_noise="0.2,0")
    assert wider.arms == ("linear-probe", "scratch") and wider.label_noise == (0.0, 0.2)
    assert CompareConfig.from_dict(wider.to_dict()) == wider


@pytest.mark.parametrize("kwargs, message", [
    (dict(arms="finetune,linear-probe"), "--arms needs scratch"),
    (dict(arms="finetune,bogus,scratch"), "unknown --arms bogus"),
    (dict(scratch_epochs="2,3"), "must include 1"),
    (dict(scratch_epochs="1,x"), "--scratch-epochs takes"),
    (dict(label_noise="0.2"), "must include 0"),
    (dict(label_noise="0,1.5"), "in [0, 1)"),
])
def test_bad_axes_are_one_message(kwargs, message):
    with pytest.raises(FastCifarError, match=message.replace("[", r"\[").replace(")", r"\)")):
        make_compare_config("smoke", {}, **kwargs)


def test_a_linear_probe_needs_pretrained_weights():
    with pytest.raises(FastCifarError, match="--linear-probe"):
        TrainConfig(linear_probe=True)


def _record(init, seed, acc, subset="s", epochs=("e1",), augmented=True, **extra):
    return {"init": init, "seed": seed, "test_acc": acc, "setting": "32px-cifar", "fraction": 1.0, "n_train": 100,
            "epochs": len(epochs), "data_stream": {"subset": f"{subset}{seed}", "augmented": augmented,
                                                   "epochs": [f"{e}{seed}" for e in epochs]}, **extra}


def test_the_verdict_follows_the_paired_interval_only_when_the_pairing_is_verified():
    # seed effects shared by both arms: the paired interval sees a steady +2 points, Welch's drowns in the spread
    pre = [_record("imagenet", s, a) for s, a in enumerate((0.50, 0.60, 0.70, 0.80))]
    rnd = [_record("random", s, a) for s, a in enumerate((0.48, 0.58, 0.68, 0.78))]
    rnd[1]["test_acc"] = 0.579
    g = axes.gap(pre, rnd)
    assert g["pairing"] == "verified" and g["interval"] == "paired"
    assert g["verdict"] == "pretrained ahead" and g["verdict_welch"] == "within noise"
    rnd[2]["data_stream"]["epochs"] = ["other2"]  # one seed's runs saw another order: no pairing claimed
    g = axes.gap(pre, rnd)
    assert "another order" in g["pairing"] and g["paired"] is None and g["verdict"] == "within noise"
    probe = [_record("probe", s, a + 0.01, augmented=False, epochs=("p",)) for s, a in enumerate((.5, .6, .7, .8))]
    assert axes.gap(probe, [_record("random", s, a) for s, a in enumerate((.5, .6, .7, .8))])["pairing"] == "verified"


def test_worth_is_measured_in_log_images_and_never_extrapolated():
    def cell(init, fraction, n, accs):
        return [dict(_record(init, s, a), fraction=fraction, n_train=n) for s, a in enumerate(accs)]

    records = (cell("random", 0.01, 100, (0.20, 0.22)) + cell("random", 0.1, 1000, (0.40, 0.42))
               + cell("random", 1.0, 10000, (0.60, 0.62)) + cell("imagenet", 0.01, 100, (0.50, 0.52))
               + cell("imagenet", 1.0, 10000, (0.90, 0.91)))
    block = axes.study_block(records, {"imagenet": "ImageNet-pretrained", "probe": "probe", "random": "random init"})
    worth = {w["fraction"]: w for w in block["worth"]}
    assert worth[0.01]["relation"] == "=" and worth[0.01]["multiple"] == pytest.approx(10 ** 1.5, rel=1e-6)
    assert worth[1.0]["relation"] == ">" and worth[1.0]["multiple"] == 1.0  # scratch never got there: no guess
    assert "more than 1x" in axes.multiple_text(worth[1.0])
    assert worth[0.01]["low"] is not None and worth[0.01]["low"] <= worth[0.01]["multiple"] <= worth[0.01]["high"]


@pytest.mark.slow
def test_a_killed_probe_or_noisy_run_resumes_to_the_weights_of_an_unbroken_one(tmp_path, synthetic_dir):
    """Every new axis is resumable: the linear probe and a noisy-label run stopped after epoch 1 continue from it
    (nothing retrained) and end with the weights the same run trains without a break."""
    from fastcifar.study import compare as cmp
    from fastcifar.rundir import run_state

    base = TrainConfig(arch="efficientnet_lite0", stem="imagenet", image_size=64, data_dir=str(synthetic_dir),
                       download=False, device="cpu", loader="tensor", epochs=2, batch_size=8, lr=0.05,
                       warmup_epochs=0.5, train_limit=40, channels_last=True)

    def cfg(out):
        return CompareConfig(base=base, seeds=(0,), fractions=(1.0,), arms=("linear-probe", "scratch"),
                             label_noise=(0.0, 0.4), out=str(out), robustness_severities=())

    def stop(name, epoch, metrics):
        if name in ("probe-f1-s0", "random-f1-s0-n0.4") and epoch == 1:
            raise KeyboardInterrupt

    for _ in range(2):  # the first interruption stops the probe, the second the noisy scratch run
        with pytest.raises(FastCifarError, match="Rerun the same command"):
            cmp.compare(cfg(tmp_path / "broken"), progress=False, on_epoch_end=stop)
    runs = tmp_path / "broken" / "runs"
    assert run_state(runs / "probe-f1-s0") == "finished"
    assert run_state(runs / "random-f1-s0-n0.4") == "interrupted"
    result = cmp.compare(cfg(tmp_path / "broken"), progress=False)
    assert result.counts["interrupted"] == 1
    cmp.compare(cfg(tmp_path / "unbroken"), progress=False)
    for name in ("probe-f1-s0", "random-f1-s0-n0.4"):
        a = load_file(str(runs / name / "model.safetensors"))
        b = load_file(str(tmp_path / "unbroken" / "runs" / name / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a), name
