"""`fastcifar compare`: a complete report directory, results.json true to the runs, resume, honest statistics."""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fastcifar.study import compare as cmp
from fastcifar.study import run_plan as plan
from fastcifar.cli import cli
from fastcifar.config import CompareConfig, TrainConfig
from fastcifar.errors import FastCifarError
from fastcifar.rundir import run_state
from fastcifar.study.plots import PLOTS
from fastcifar.study.results import summarize
from fastcifar.study.stats import mean_std, t_quantile, verdict, welch_ci

REPORT_FILES = {"report.md", "results.json", "env.json", "compare.json", "pretrained.json", *PLOTS}


def tiny_args(data_dir: Path, weights: Path, out: Path, *extra: str) -> list[str]:
    """8 one-epoch runs of a ResNet-18 (ImageNet stem, 32 px) on 20 or 40 synthetic images (2 or 4 steps)."""
    return ["compare", "--data-dir", str(data_dir), "--no-download", "--device", "cpu", "--loader", "tensor",
            "--preset", "smoke", "--train-limit", "40", "--epochs", "1", "--batch-size", "32", "--lr", "0.05",
            "--seeds", "2", "--fractions", "0.5,1.0", "--pretrained-weights", str(weights), "--out", str(out), *extra]


@pytest.fixture(scope="module")
def report(tmp_path_factory, synthetic_dir, fake_weights):
    out = tmp_path_factory.mktemp("compare") / "report"
    args = tiny_args(synthetic_dir, fake_weights, out, "--json", "--tensorboard")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return {"out": out, "args": args, "stdout": result.stdout}


def _summaries(out: Path) -> dict[str, dict]:
    return {d.name: json.loads((d / "summary.json").read_text()) for d in sorted((out / "runs").iterdir())}


def test_report_directory_is_complete(report):
    import matplotlib.image

    out = report["out"]
    assert REPORT_FILES <= {p.name for p in out.iterdir()}
    assert not list(out.rglob("*.tmp"))  # every file was written atomically
    summaries = _summaries(out)
    assert sorted(summaries) == sorted(f"{init}-f{f}-s{s}" for init in ("imagenet", "random") for f in ("0.5", "1")
                                       for s in (0, 1))
    assert all(s["status"] == "finished" for s in summaries.values())
    for name in PLOTS:
        height, width = matplotlib.image.imread(out / name).shape[:2]
        assert height > 300 and width > 500, name
    md = (out / "report.md").read_text()
    for text in ("| training data | model | epochs |", "100 % (36 images)", "50 % (18 images)", "±", "95 % CI",
                 "## Conclusion", "200 images", "![", "not torchvision's IMAGENET1K_V1 file"):
        assert text in md, text
    env = json.loads((out / "env.json").read_text())
    assert env["command_line"] == shlex.join(env["command"]) and "gpus" in env and env["torch"] == torch.__version__
    assert CompareConfig.load(out / "compare.json").seeds == (0, 1)


def test_results_json_matches_the_run_directories(report):
    out = report["out"]
    results = json.loads((out / "results.json").read_text())
    assert json.loads(report["stdout"])["summary"] == results["summary"]  # --json prints results.json
    summaries = _summaries(out)
    for row in results["summary"]:
        accs = [s["test_acc"] for name, s in summaries.items()
                if name.startswith(f"{row['init']}-f{row['fraction']:g}-")]
        assert row["n_seeds"] == len(accs) == 2
        assert row["test_acc_mean"] == pytest.approx(np.mean(accs))
        assert row["test_acc_std"] == pytest.approx(np.std(accs, ddof=1))
        # Both arms of a fraction train on the same images: same limit and split sizes.
        assert {s["n_train"] for n, s in summaries.items() if f"-f{row['fraction']:g}-" in n} == {row["n_train"]}
    for gap in results["gaps"]:
        prefix = {init: f"{init}-f{gap['fraction']:g}-" for init in ("imagenet", "random")}
        acc = {init: [100 * s["test_acc"] for n, s in summaries.items() if n.startswith(p)]
               for init, p in prefix.items()}
        ci = welch_ci(acc["imagenet"], acc["random"])
        assert gap["gap_points"] == pytest.approx(np.mean(acc["imagenet"]) - np.mean(acc["random"]))
        if ci is not None:
            assert (gap["ci95_low_points"], gap["ci95_high_points"]) == pytest.approx((ci.low, ci.high))
    assert {r["name"] for r in results["runs"]} == set(summaries)
    [section] = results["sections"]  # one setting: the preset's 32 px with its ImageNet stem
    assert section["setting"] == "32px-imagenet" and section["summary"] == results["summary"]
    assert section["per_class"]["random"]["fraction"] == 1.0
    assert np.sum(section["per_class"]["random"]["confusion_sum"]) == 2 * 200  # 2 seeds x 200 test images
    assert results["lr_selection"] is None and section["lr_selection"] is None  # --lr given: one shared lr


def test_rerun_skips_finished_runs(report, monkeypatch):
    import fastcifar.train.loop

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(fastcifar.train.loop, "train", must_not_train)
    monkeypatch.setattr(fastcifar.train.loop, "resume", must_not_train)
    out = report["out"]
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*")}
    result = CliRunner().invoke(cli, report["args"])
    assert result.exit_code == 0, result.output
    assert "8 already finished" in result.output
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*")} == before


def test_other_options_on_the_same_report_are_refused(report):
    args = [a if a != "2" else "3" for a in report["args"]]  # --seeds 3
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "other options" in result.output and "seeds" in result.output
    assert "Traceback" not in result.output
    assert len(list((report["out"] / "runs").iterdir())) == 8


def test_interrupted_run_resumes_and_setup_leftovers_restart(tmp_path, synthetic_dir, fake_weights, monkeypatch):
    import fastcifar.train.loop

    base = TrainConfig(data_dir=str(synthetic_dir), download=False, device="cpu", loader="tensor", stem="imagenet",
                       epochs=2, batch_size=8, lr=0.05, warmup_epochs=0.5, train_limit=40)
    cfg = CompareConfig(base=base, seeds=(0,), fractions=(1.0,), pretrained_weights=str(fake_weights),
                        out=str(tmp_path / "report"), robustness_severities=())  # resuming is the point here
    runs = tmp_path / "report" / "runs"

    def stop(name, epoch, metrics):
        if name == "imagenet-f1-s0" and epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(FastCifarError, match="Rerun the same command") as info:
        cmp.compare(cfg, progress=False, on_epoch_end=stop)
    assert info.value.exit_code == 130
    first_epoch = (runs / "imagenet-f1-s0" / "metrics.jsonl").read_text()
    assert run_state(runs / "imagenet-f1-s0") == "interrupted"
    (runs / "random-f1-s0").mkdir()  # a run that died during setup: config only, no state
    (runs / "random-f1-s0" / "config.json").write_text(json.dumps(base.to_dict()))
    assert run_state(runs / "random-f1-s0") == "new"

    calls = []
    real_train, real_resume = fastcifar.train.loop.train, fastcifar.train.loop.resume
    # resume() continues through train(resume_dir=...): record which of the two each call was.
    monkeypatch.setattr(fastcifar.train.loop, "train", lambda cfg, **kw: calls.append(
        ("train" if kw.get("resume_dir") is None else "continue", Path(cfg.out).name)) or real_train(cfg, **kw))
    monkeypatch.setattr(fastcifar.train.loop, "resume", lambda d, **kw: calls.append(("resume", Path(d).name))
                        or real_resume(d, **kw))
    result = cmp.compare(cfg, progress=False)
    assert calls == [("resume", "imagenet-f1-s0"), ("continue", "imagenet-f1-s0"), ("train", "random-f1-s0")]
    assert result.counts == {"finished": 0, "interrupted": 1, "new": 1}
    metrics = (runs / "imagenet-f1-s0" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2 and metrics[0] == first_epoch.strip()  # epoch 1 was kept, not retrained
    assert result.results["summary"][0]["n_seeds"] == 1
    assert "no confidence interval is possible" in result.results["conclusion"]


# ---------------------------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("df, expected", [(1, 12.706), (2, 4.303), (3, 3.182), (5, 2.571), (10, 2.228),
                                          (30, 2.042), (120, 1.980), (1e7, 1.960)])
def test_t_quantile_matches_the_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)


def test_t_quantile_matches_closed_forms():
    for p in (0.6, 0.9, 0.975, 0.999):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)  # Cauchy
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
        assert t_quantile(1 - p, 3.7) == pytest.approx(-t_quantile(p, 3.7), rel=1e-9)
    assert t_quantile(0.5, 4) == pytest.approx(0.0, abs=1e-9)
    assert 2.571 < t_quantile(0.975, 4.5) < 2.776  # fractional df lies between its neighbours (df 5 and df 4)


def test_welch_ci_on_known_inputs():
    ci = welch_ci([1, 2, 3], [4, 5, 6])  # equal variances 1, n 3 -> se sqrt(2/3), df 4
    assert ci.gap == -3 and ci.df == pytest.approx(4.0) and ci.se == pytest.approx(math.sqrt(2 / 3))
    assert (ci.low, ci.high) == pytest.approx((-3 - 2.7764451 * math.sqrt(2 / 3), -3 + 2.7764451 * math.sqrt(2 / 3)))
    a, b = [94.1, 93.8, 94.4, 94.0], [93.0, 94.6]  # unequal variances and sizes: Welch-Satterthwaite df
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 2
    ci = welch_ci(a, b)
    assert ci.df == pytest.approx((va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 1))
    assert ci.high - ci.gap == pytest.approx(t_quantile(0.975, ci.df) * math.sqrt(va + vb))
    assert welch_ci([94.0], [93.0, 93.5]) is None and verdict(None) == "no CI"
    flat = welch_ci([0.9, 0.9], [0.8, 0.8])
    assert (flat.low, flat.high, flat.df) == (pytest.approx(0.1), pytest.approx(0.1), None)
    assert verdict(welch_ci([90, 91, 92], [80, 81, 82])) == "pretrained ahead"
    assert verdict(welch_ci([80, 81, 82], [90, 91, 92])) == "random ahead"
    assert verdict(welch_ci([80, 85, 90], [82, 84, 86])) == "within noise"
    # Where lower is better (NLL, calibration error), a negative gap is pretrained's win: real ImageNet weights showed
    # the report calling pretrained's lower NLL (1.03 vs 1.96) "random ahead".
    assert verdict(welch_ci([1.0, 1.05, 1.1], [1.9, 1.95, 2.0]), "lower") == "pretrained ahead"
    assert verdict(welch_ci([1.9, 1.95, 2.0], [1.0, 1.05, 1.1]), "lower") == "random ahead"
    assert verdict(welch_ci([1.0, 1.5, 2.0], [1.2, 1.4, 1.6]), "lower") == "within noise"
    assert mean_std([2.0]) == (2.0, None) and mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))


def _records(accs: dict[str, list[float]], fraction: float = 1.0, setting: str = "32px-cifar") -> list[dict]:
    confusion = np.diag([100] * 10).tolist()
    return [{"init": init, "fraction": fraction, "seed": seed, "setting": setting, "name": f"{init}-s{seed}",
             "test_acc": acc, "test_loss": 1 - acc,
             "train_seconds": 10.0, "time_to_90pct_final_test_acc": 5.0, "n_train": 900, "n_test": 1000,
             "train_limit": 1000, "batch_size": 64, "lr": 0.05, "epochs": 2, "per_class_test_acc": [acc] * 10,
             "confusion": confusion, "class_names": [str(c) for c in range(10)]}
            for init, values in accs.items() for seed, acc in enumerate(values)]


@pytest.mark.parametrize("accs, kind, phrases", [
    ({"imagenet": [0.90, 0.91, 0.92], "random": [0.80, 0.81, 0.82]}, "torchvision",
     ["pretrained is ahead by 10.00 points (95 % CI", "real advantage for ImageNet pretraining"]),
    ({"imagenet": [0.80, 0.82], "random": [0.81, 0.815]}, "torchvision", ["is within noise", "support no difference"]),
    ({"imagenet": [0.85], "random": [0.80]}, "torchvision", ["no confidence interval is possible", "--seeds 3"]),
    ({"imagenet": [0.80, 0.81], "random": [0.80, 0.82]}, "stand-in",
     ["stand-in random weights", "ImageNet's mean/std", "not a pure seed-noise (A/A) measurement"]),
])
def test_conclusion_states_what_the_numbers_support(accs, kind, phrases):
    source = {"kind": kind, "verified_imagenet": kind == "torchvision", "label": kind}
    results = summarize({}, source, _records(accs), {"command_line": "fastcifar compare"})
    for phrase in phrases:
        assert phrase in results["conclusion"], results["conclusion"]
    assert "1,000 images" in results["conclusion"]  # the test-set size caveat
    assert results["summary"][0]["n_seeds"] == len(accs["imagenet"])


# ---------------------------------------------------------------------------------------------- plan + input


def test_plan_shares_data_between_inits_and_fits_small_fractions():
    base = TrainConfig(train_limit=10_000, batch_size=128, lr=0.1, val_fraction=0.1)
    cfg = CompareConfig(base=base, seeds=(3, 4), fractions=(1.0, 0.1), out="r")
    runs = plan.plan_runs(cfg, 50_000, "/w.pth")
    assert len(runs) == 8 and runs[0].name == "imagenet-f0.1-s3" and runs[0].cfg.init == "/w.pth"
    for a, b in zip(runs[::2], runs[1::2]):  # the two arms of one (seed, fraction)
        assert (a.init, b.init, b.cfg.init) == ("imagenet", "random", "random")
        differ = {k for k, v in a.cfg.to_dict().items() if b.cfg.to_dict()[k] != v}
        assert differ == {"init", "out"}
    small = runs[0].cfg
    # 900 training images make 7 steps of 128: the batch shrinks to give at least 20 (min_steps_per_epoch).
    assert small.train_limit == 1000 and small.batch_size == 32 and small.lr == pytest.approx(0.025)
    assert runs[2].cfg.train_limit == 10_000 and runs[2].cfg.batch_size == 128 and runs[2].cfg.lr == 0.1
    assert runs[2].run_dir == Path("r/runs/imagenet-f1-s3")
    assert CompareConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.fractions == (0.1, 1.0)


def test_pretrained_source_is_checked_and_recorded(tmp_path, fake_weights, monkeypatch):
    import torchvision.models._api as tv_api

    from fastcifar.study import pretrained

    base = TrainConfig(stem="imagenet")
    source = pretrained.resolve_pretrained(CompareConfig(base=base, pretrained_weights=str(fake_weights)), tmp_path)
    assert source["kind"] == "file" and not source["verified_imagenet"] and "not torchvision's" in source["label"]
    # A file whose sha256 starts with torchvision's published prefix is the real IMAGENET1K_V1 file.
    monkeypatch.setattr(pretrained, "_torchvision_hash_prefix", lambda arch: source["sha256"][:8])
    assert pretrained.resolve_pretrained(CompareConfig(base=base, pretrained_weights=str(fake_weights)),
                                  tmp_path)["verified_imagenet"]

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(tv_api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(FastCifarError, match="--if-no-weights stand-in") as offline_error:
        pretrained.resolve_pretrained(CompareConfig(base=base), tmp_path / "a")
    # compare's own options only: it has no --init (issue 36)
    assert "pass it with --pretrained-weights PATH" in str(offline_error.value)
    assert "--init" not in str(offline_error.value)
    stand_in = pretrained.resolve_pretrained(CompareConfig(base=base, if_no_weights="stand-in"), tmp_path / "b")
    assert stand_in["kind"] == "stand-in" and "STAND-IN" in stand_in["label"] and Path(stand_in["init"]).is_file()


@pytest.mark.parametrize("extra, message", [
    (["--fractions", "0,1"], "must each be in (0, 1]"),
    (["--fractions", "0.5,1.5"], "must each be in (0, 1]"),
    (["--fractions", "half"], "comma-separated numbers"),
    (["--fractions", "0.01"], "a run needs at least 10"),
    (["--pretrained-weights", "/nonexistent/w.pth"], "does not exist"),
    (["--init", "imagenet"], "No such option"),
])
def test_bad_input_is_one_message(extra, message, tmp_path, synthetic_dir, fake_weights):
    args = tiny_args(synthetic_dir, fake_weights, tmp_path / "r")
    result = CliRunner().invoke(cli, args + extra)
    assert result.exit_code in (1, 2) and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "r" / "runs").exists()


# ---------------------------------------------------------------------------------------------- lr selection + settings


def test_plan_selection_and_reuse_of_the_chosen_run():
    base = TrainConfig(train_limit=10_000, batch_size=128, lr=0.1, val_fraction=0.1, backbone_lr_scale=0.5)
    cfg = CompareConfig(base=base, seeds=(3, 4), fractions=(0.1, 1.0), out="r", lr_grid=(0.2, 0.05))
    assert cfg.lr_grid == (0.05, 0.2)
    selection = plan.plan_selection(cfg, 50_000, "/w.pth")
    assert [r.name for r in selection] == ["imagenet-f1-s3-lr0.05", "imagenet-f1-s3-lr0.2", "random-f1-s3-lr0.05",
                                           "random-f1-s3-lr0.2"]
    assert all(r.run_dir.parent == Path("r/lr-select") and r.fraction == 1.0 and r.seed == 3 for r in selection)
    assert [r.cfg.lr for r in selection] == [0.05, 0.2, 0.05, 0.2]
    # The backbone scale is the pretrained arm's only: a random init has no pretrained backbone to protect.
    assert [r.cfg.backbone_lr_scale for r in selection] == [0.5, 0.5, 1.0, 1.0]
    lrs = {((32, "cifar"), "imagenet"): 0.05, ((32, "cifar"), "random"): 0.2}
    runs = plan.plan_runs(cfg, 50_000, "/w.pth", lrs)
    by_name = {r.name: r for r in runs}
    # First seed, largest fraction: the selection run of the chosen lr, the same directory and config.
    assert by_name["imagenet-f1-s3-lr0.05"].cfg == selection[0].cfg
    assert by_name["random-f1-s3-lr0.2"].cfg == selection[3].cfg
    assert by_name["imagenet-f1-s4"].cfg.lr == 0.05 and by_name["random-f1-s4"].cfg.lr == 0.2
    small = by_name["random-f0.1-s3"].cfg  # 900 images: batch 32, the chosen lr scaled with it
    assert small.batch_size == 32 and small.lr == pytest.approx(0.05)
    assert CompareConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_lr_grid_selects_per_arm_on_validation_and_resumes(tmp_path, synthetic_dir, fake_weights, monkeypatch):
    import fastcifar.train.loop

    out = tmp_path / "report"
    args = [a for a in tiny_args(synthetic_dir, fake_weights, out) if a not in ("--lr", "0.05")]
    args[args.index("--seeds") + 1] = "1"
    args += ["--lr-grid", "0.1,0.02", "--json", "--robustness-severities", "none"]  # the lr choice is the point

    def stop(epoch, metrics):  # Ctrl-C in the third selection run
        raise KeyboardInterrupt

    real_train = fastcifar.train.loop.train
    monkeypatch.setattr(fastcifar.train.loop, "train", lambda cfg, **kw: real_train(
        cfg, **{**kw, "on_epoch_end": stop if Path(cfg.out).name == "random-f1-s0-lr0.02" else kw["on_epoch_end"]}))
    interrupted = CliRunner().invoke(cli, args)
    assert interrupted.exit_code == 130, interrupted.output
    first = (out / "lr-select" / "imagenet-f1-s0-lr0.02" / "metrics.jsonl").read_text()
    monkeypatch.setattr(fastcifar.train.loop, "train", real_train)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert (out / "lr-select" / "imagenet-f1-s0-lr0.02" / "metrics.jsonl").read_text() == first  # reused, not redone
    results = json.loads(result.stdout)
    record = results["lr_selection"]["32px-imagenet"]
    assert set(record) == {"imagenet", "random"}
    for init, arm in record.items():
        assert arm["grid"] == [0.02, 0.1] and len(arm["val_acc"]) == 2
        vals = [json.loads((out / "lr-select" / f"{init}-f1-s0-lr{lr:g}" / "summary.json").read_text())["val_acc"]
                for lr in arm["grid"]]
        assert arm["val_acc"] == vals and arm["chosen"] == arm["grid"][int(np.argmax(vals))]
        # The chosen selection run is the fraction-1.0 run of the table: trained once, at the chosen lr.
        [row] = [r for r in results["runs"] if r["init"] == init and r["fraction"] == 1.0]
        assert row["run_dir"] == f"lr-select/{init}-f1-s0-lr{arm['chosen']:g}"
        # 36 images cannot give batch 32 twenty steps: the batch shrinks and the chosen lr scales with it.
        assert row["lr"] == pytest.approx(arm["chosen"] * row["batch_size"] / 32)
    small = [r for r in results["runs"] if r["fraction"] == 0.5]
    assert {r["init"]: r["lr"] for r in small} == {
        r["init"]: pytest.approx(record[r["init"]]["chosen"] * r["batch_size"] / 32) for r in small}
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["imagenet-f0.5-s0", "random-f0.5-s0"]
    md = (out / "report.md").read_text()
    assert "### Learning rate, chosen per arm on the validation split" in md
    assert "The test set played no part in the choice" in md and "peak lr chosen per arm from 0.02, 0.1" in md


def test_two_settings_give_two_sections(tmp_path, synthetic_dir, fake_weights):
    import matplotlib.image

    out = tmp_path / "report"
    args = tiny_args(synthetic_dir, fake_weights, out, "--robustness-severities", "none", "--image-sizes",
                     "32:imagenet,40", "--seeds", "1", "--fractions", "1.0")  # the sections are the point
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert [s["setting"] for s in results["sections"]] == ["32px-imagenet", "40px-imagenet"]
    assert {(r["setting"], r["image_size"]) for r in results["runs"]} == {("32px-imagenet", 32), ("40px-imagenet", 40)}
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(
        f"{i}-f1-s0-{s}" for i in ("imagenet", "random") for s in ("32px-imagenet", "40px-imagenet"))
    md = (out / "report.md").read_text()
    assert "## 32 px, ImageNet stem" in md and "## 40 px, ImageNet stem" in md and "At 40 px, ImageNet stem" in md
    for setting in ("32px-imagenet", "40px-imagenet"):
        for name in PLOTS:
            file = name.replace(".png", f"-{setting}.png")
            assert f"]({file})" in md and matplotlib.image.imread(out / file).shape[0] > 300


@pytest.mark.parametrize("extra, message", [
    (["--lr-grid", "fast"], "--lr-grid takes comma-separated learning rates"),
    (["--lr-grid", "0.1,0.1"], "must be distinct"),
    (["--lr-grid", "0.1", "--val-fraction", "0"], "give --val-fraction > 0"),
    (["--image-sizes", "16"], "outside 32..512"),
    (["--image-sizes", "32:resnet"], "unknown stem 'resnet'"),
    (["--image-sizes", "big"], "--image-sizes takes sizes like"),
])
def test_bad_selection_or_setting_is_one_message(extra, message, tmp_path, synthetic_dir, fake_weights):
    result = CliRunner().invoke(cli, tiny_args(synthetic_dir, fake_weights, tmp_path / "r") + extra)
    assert result.exit_code == 1 and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


def test_library_gives_the_cli_defaults():
    from fastcifar.config import make_compare_config

    cfg = make_compare_config("smoke", {"seed": 3})
    assert cfg.seeds == (3, 4) and cfg.fractions == (0.1, 1.0) and cfg.lr_grid == (0.025, 0.05)
    assert cfg.out == f"reports/resnet18-smoke-{cfg.fingerprint()}" and cfg.settings == ((32, "imagenet"),)
    assert make_compare_config("smoke", {"lr": 0.1}).lr_grid is None  # an explicit lr: one shared lr
    assert make_compare_config("seed", {}, lr_grid="none").lr_grid is None
    other = make_compare_config("smoke", {"seed": 3}, fractions="1.0")
    assert other.out != cfg.out  # another experiment, another default report directory


def test_report_holds_calibration_and_robustness_of_every_final_model(report):
    out = report["out"]
    results = json.loads((out / "results.json").read_text())
    for run in results["runs"]:
        assert 0 <= run["ece"] <= 1 and run["nll"] > 0 and 0 <= run["mean_corruption_acc"] <= 1
        assert len(run["corruption_acc"]) == 9 and all(set(by) == {"1", "3", "5"} for by in run["corruption_acc"].values())
        cached = json.loads((out / run["run_dir"] / "robustness.json").read_text())
        assert cached["clean"]["ece"] == run["ece"]  # one evaluation, cached in the run directory
    [section] = results["sections"]
    assert {(g["fraction"], g["metric"]) for g in section["robustness_gaps"]} == {
        (f, m) for f in (0.5, 1.0) for m in ("ece", "nll", "mean_corruption_acc")}
    row = next(r for r in section["summary"] if r["init"] == "random" and r["fraction"] == 1.0)
    accs = [r["mean_corruption_acc"] for r in results["runs"] if r["init"] == "random" and r["fraction"] == 1.0]
    assert row["mean_corruption_acc_mean"] == pytest.approx(np.mean(accs))
    md = (out / "report.md").read_text()
    assert "### Beyond top-1: calibration and corruption robustness" in md and "](robustness.png)" in md
    assert "mean corruption accuracy (points)" in md and "](reliability.png)" in md


def test_report_shows_each_protocol_per_corruption_and_its_own_wall_time(report):
    out = report["out"]
    results = json.loads((out / "results.json").read_text())
    [section] = results["sections"]
    for run in results["runs"]:  # the clean accuracy measured the way the corrupted points are (no TTA)
        cached = json.loads((out / run["run_dir"] / "robustness.json").read_text())
        assert run["clean_acc_no_tta"] == cached["clean"]["accuracy"]
    table = section["corruption_acc"]
    assert table["fraction"] == 1.0 and table["severities"] == ["1", "3", "5"]
    runs = [r for r in results["runs"] if r["init"] == "random" and r["fraction"] == 1.0]
    assert table["accuracy"]["random"]["contrast"]["5"] == pytest.approx(
        np.mean([r["corruption_acc"]["contrast"]["5"] for r in runs]))
    wall = results["wall"]
    assert wall["seconds"] > 0 and wall["trained"] + wall["reused"] >= len(results["runs"])
    md = (out / "report.md").read_text()
    assert "| clean accuracy, no TTA (%) |" in md and "Accuracy (%) per corruption and severity" in md
    # the module's report is rerun by other tests: one command or several, whichever ran first
    assert "| contrast |" in md and re.search(r"Wall time of the (compare command|\d+ compare commands) that wrote this "
                                               r"report", md)


def test_time_to_90_is_not_the_training_time_when_only_the_last_epoch_got_there():
    from fastcifar.train.summary import _time_to_fraction

    history = [{"test_acc": 0.3, "elapsed_train_seconds": 5.0}, {"test_acc": 0.5, "elapsed_train_seconds": 10.0}]
    assert _time_to_fraction(history, 0.5, 0.9) is None
    history[0]["test_acc"] = 0.46
    assert _time_to_fraction(history, 0.5, 0.9) == 5.0


def test_the_terminal_table_is_printed_whole_in_a_log(capsys):
    from fastcifar.study.report import print_summary

    long_label = "pretrained (STAND-IN random weights, not ImageNet)"
    results = summarize({}, {"kind": "stand-in", "verified_imagenet": False, "label": "x"},
                        _records({"imagenet": [0.8, 0.81], "random": [0.79, 0.8]}), {"command_line": "x"})
    for section in results["sections"]:
        for row in section["summary"]:
            row["label"] = long_label if row["init"] == "imagenet" else row["label"]
    results["machine"] = "CPU"
    print_summary(results, [])
    out = capsys.readouterr().out
    assert long_label in out and "32px-cifar" in out
    assert not re.search(r"…\s*│", out)  # no cell cut short at 80 columns (the CI's own "…" is not a cut)


def test_compare_tensorboard_gives_every_run_its_own_event_directory(report):
    """`tensorboard --logdir REPORT/tensorboard` overlays both arms, all seeds and fractions: arm/fraction/seed."""
    root = report["out"] / "tensorboard"
    dirs = {str(p.parent.relative_to(root)) for p in root.rglob("events.out.tfevents.*")}
    assert dirs == {f"{init}/f{f}/s{s}" for init in ("imagenet", "random") for f in ("0.5", "1") for s in (0, 1)}
    md = (report["out"] / "report.md").read_text()
    assert "Code: fastcifar at " in md and "Libraries: python " in md  # the report quotes what made it, once


def test_robustness_severities_are_an_option_and_none_skips_the_evaluation(tmp_path):
    from fastcifar.config import ROBUSTNESS_SEVERITIES, make_compare_config

    default = make_compare_config("smoke", {}, if_no_weights="stand-in")
    assert default.robustness_severities == ROBUSTNESS_SEVERITIES
    assert default.to_dict()["robustness_severities"] == list(ROBUSTNESS_SEVERITIES)  # compare.json says it
    assert make_compare_config("smoke", {}, robustness_severities="none").robustness_severities == ()
    picked = make_compare_config("smoke", {}, robustness_severities="5,1")
    assert picked.robustness_severities == (1, 5) and picked.fingerprint() != default.fingerprint()
    assert CompareConfig.from_dict(picked.to_dict()).robustness_severities == (1, 5)
    with pytest.raises(FastCifarError, match="1-5"):
        make_compare_config("smoke", {}, robustness_severities="7")


def test_fit_keeps_the_largest_pool_that_fits():
    from fastcifar.study import sizing

    def estimate(pool):  # a minute of fixed cost (the robustness evaluation) plus 0.1 s per image
        return 60 + 0.1 * pool

    assert sizing.fit(10_000, 2000, estimate) == (10_000, 1060)  # fits as asked
    pool, seconds = sizing.fit(10_000, 600, estimate)
    # the largest step of 500 that fits the estimate's share of the budget (the rest: start-up, the report, noise)
    assert pool == 4500 and seconds <= sizing.BUDGET_SHARE * 600 < estimate(pool + 500)
    assert sizing.fit(10_000, 10, estimate)[0] == sizing.MIN_POOL  # nothing fits: the smallest study, said so
    line = sizing.describe({"budget_s": 600, "device": "cpu (x)", "images_per_s": 58, "requested_pool": 10_000,
                            "requested_estimate_s": 3700, "pool": 5000, "estimate_s": 560})
    assert "~62 min, over the 10-min budget" in line and "sized to 5,000 training images" in line
    assert "--time-budget 0 (make run BUDGET=0)" in line


@pytest.mark.slow
def test_the_budget_estimate_is_within_30_percent_of_what_the_study_took(tmp_path, synthetic_dir, fake_weights):
    """The budget's estimate of a real study (a few training steps and no-grad batches of its model, timed on random
    data, priced at the plan's image counts) against what the same parts took (training loops, per-epoch
    evaluation, robustness pass: the runs' records), both in sizing.json, by the process's CPU time: with one torch
    thread another process on the machine leaves that alone, while the wall-clock ratio of the same studies moved
    from 0.67 to 2.66 beside other work (docs/compare.md, "The time budget")."""
    from fastcifar.study import sizing

    out = tmp_path / "sized"
    args = ["compare", "--data-dir", str(synthetic_dir), "--no-download", "--device", "cpu", "--preset", "smoke",
            "--stem", "imagenet", "--train-limit", "400", "--epochs", "2", "--batch-size", "16", "--lr", "0.05",
            "--seeds", "1", "--fractions", "1.0", "--pretrained-weights", str(fake_weights),
            "--robustness-severities", "3", "--time-budget", "60", "--out", str(out)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core: a process beside it on another core leaves its speed alone
    try:
        result = CliRunner().invoke(cli, args)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "sizing.json").read_text())
    assert record["pool"] == record["requested_pool"] == 400  # an hour holds it: the estimate decided nothing here
    actual = record["actual"]
    assert all(actual[part] > 0 and record["estimate"][part] > 0 for part in sizing.PARTS), record
    assert 0.7 <= actual["cpu"]["ratio"] <= 1.3, (actual["cpu"], record["estimate_cpu"])


def test_a_time_budget_sizes_the_study_says_so_and_a_rerun_keeps_it(tmp_path, synthetic_dir, fake_weights,
                                                                      monkeypatch):
    """On a slow machine (the probe says 10 img/s) a 1-minute budget cannot hold 400 images: the pool shrinks, the
    log and the report say so, and rerunning the same command resumes the sized study without measuring again."""
    from fastcifar.study import sizing

    monkeypatch.setattr(sizing, "MIN_POOL", 100)
    probes = []

    def probe(base, settings, device, severity=3):
        probes.append(1)
        slow = sizing.Costs(train=0.1, eval=0.03, robustness=0.03, corrupt=0.001)
        return {s: {"wall": slow, "cpu": slow} for s in settings}, "cpu (a slow one)"

    monkeypatch.setattr(sizing, "probe", probe)
    out = tmp_path / "sized"
    args = ["compare", "--data-dir", str(synthetic_dir), "--no-download", "--device", "cpu", "--preset", "smoke",
            "--train-limit", "400", "--epochs", "1", "--batch-size", "16", "--lr", "0.05", "--seeds", "1",
            "--fractions", "0.5,1.0", "--pretrained-weights", str(fake_weights), "--robustness-severities", "none",
            "--time-budget", "1", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "sizing.json").read_text())
    assert record["requested_pool"] == 400 and record["pool"] < 400 and record["requested_estimate_s"] > 60
    assert f"sized to {record['pool']:,} training images" in result.output
    assert json.loads((out / "compare.json").read_text())["base"]["train_limit"] == record["pool"]
    assert "Sized to a time budget" in (out / "report.md").read_text()
    assert "left)" in result.output  # the runs' log lines carry an estimate of the time left
    estimate = record["estimate"]
    assert set(estimate) == set(sizing.PARTS) and record["estimate_s"] == pytest.approx(sum(estimate.values()))
    assert estimate["robustness_s"] == 0 < estimate["evaluation_s"] < estimate["training_s"]  # no robustness asked
    actual = record["actual"]  # what the same parts took: the runs' records
    assert actual["total_s"] == pytest.approx(sum(actual[p] for p in sizing.PARTS)) and not actual["resumed"]
    assert actual["ratio"] == pytest.approx(actual["total_s"] / record["estimate_s"])
    assert actual["robustness_s"] == 0 and actual["cpu"]["training_s"] > 0  # no robustness; both clocks recorded
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert probes == [1] and "4 already finished" in again.output  # the first decision stands: the same study
    rerun = json.loads((out / "sizing.json").read_text())["actual"]  # a resumed study: the records of both
    assert rerun["resumed"] and rerun["total_s"] == pytest.approx(actual["total_s"])
