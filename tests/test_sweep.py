"""bench/sweep.py: many variants x seeds in one process, one JSON line per finished run, resumable; the variants
files the GPU check runs are valid configs; bench/time_to_accuracy.py runs through it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastcifar.config import make_train_config
from fastcifar.errors import FastCifarError

BENCH = Path(__file__).resolve().parents[1] / "bench"
TOY = ["--set", "train_limit=200", "--set", "epochs=2", "--set", "batch_size=32", "--set", "stem=imagenet",
       "--set", "compile=false", "--set", "lr=0.05", "--set", "warmup_epochs=0.4", "--set", "val_fraction=0.1"]


def load_sweep():
    spec = importlib.util.spec_from_file_location("bench_sweep", BENCH / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sweep():
    return load_sweep()


def test_two_variants_two_seeds_in_one_process_one_line_per_run(tmp_path, synthetic_dir, sweep, capsys):
    variants = tmp_path / "v.json"
    variants.write_text(json.dumps({"target": 0.3, "variants": [
        {"name": "plain", "preset": "fast", "seeds": 2, "set": {}},
        {"name": "smooth", "preset": "fast", "seeds": 2, "set": {"label_smoothing": 0.2, "alternating_flip": True}}]}))
    jsonl = tmp_path / "runs.jsonl"
    loads = []
    import fastcifar.data.cifar as cifar

    real = cifar.load_cifar10
    cifar.load_cifar10 = lambda *a, **k: loads.append(1) or real(*a, **k)
    try:
        args = ["--data-dir", str(synthetic_dir), "--variants", str(variants), "--jsonl", str(jsonl), "--device", "cpu",
                "--summary-out", str(tmp_path / "summary.json"), *TOY]
        assert sweep.main(args) == 0
    finally:
        cifar.load_cifar10 = real
    assert loads == [1]  # the data files are read once for all four runs
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [(r["variant"], r["seed"]) for r in lines] == [("plain", 0), ("plain", 1), ("smooth", 0), ("smooth", 1)]
    for r in lines:
        assert r["status"] == "finished" and 0 <= r["test_acc"] <= 1 and r["train_seconds"] > 0
        assert r["loader"] == "tensor" and r["precision"] == "fp32" and r["compile"] is False
        assert r["epochs"] == 2 and r["n_train"] == 180 and len(r["test_acc_per_epoch"]) == 2
        assert r["state_save_seconds"] == 0  # sweep runs write no state.pt
    assert lines[2]["levers"] == ["label smoothing 0.2", "alternating flip"] and lines[0]["levers"] == []
    table = capsys.readouterr().out
    assert "| plain | 2 |" in table and "| smooth | 2 |" in table
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [v["variant"] for v in summary["variants"]] == ["plain", "smooth"]
    assert summary["variants"][0]["test_acc"]["n"] == 2
    # A rerun skips the pairs already done (a sweep cut by its time limit continues where it stopped).
    assert sweep.main(args) == 0
    assert len(jsonl.read_text().splitlines()) == 4


def test_a_failing_variant_is_recorded_and_the_sweep_goes_on(tmp_path, synthetic_dir, sweep):
    variants = [{"name": "too-big", "preset": "fast", "seeds": 1, "set": {"batch_size": 5000}}]
    lines = sweep.run_sweep(variants, data_dir=str(synthetic_dir), jsonl=tmp_path / "r.jsonl", device="cpu",
                            base_overrides={"train_limit": 100, "stem": "imagenet"})
    assert lines[0]["status"] == "failed" and "cannot fill one batch" in lines[0]["error"]
    assert sweep.summarize(lines)[0]["failed"] == 1


@pytest.mark.parametrize("name", ["gpu.json", "seed.json", "dry-run.json"])
def test_the_checks_variants_files_are_valid_configs(name, sweep):
    variants, target = sweep.load_variants(BENCH / "variants" / name)
    assert 0 < target < 1 and variants
    for v in variants:
        make_train_config(v["preset"], dict(v["set"]))  # validates every override, lever combinations included


def test_bad_variants_and_overrides_are_one_message(tmp_path, sweep):
    with pytest.raises(FastCifarError, match="TrainConfig field"):
        sweep.parse_overrides(["nonsense=1"])
    with pytest.raises(FastCifarError, match="not a valid"):
        sweep.parse_overrides(["epochs=many"])
    assert sweep.parse_overrides(["ema=none", "whiten_stem=true", "lr=0.1"]) == {"ema": None, "whiten_stem": True,
                                                                                   "lr": 0.1}
    bad = tmp_path / "bad.json"
    for content in ("{", json.dumps({"variants": []}), json.dumps({"variants": [{"name": "a", "set": {"x": 1}}]}),
                    json.dumps({"variants": [{"name": "a"}, {"name": "a"}]})):
        bad.write_text(content)
        with pytest.raises(FastCifarError):
            sweep.load_variants(bad)
    proc = subprocess.run([sys.executable, str(BENCH / "sweep.py"), "--data-dir", str(tmp_path), "--variants",
                           str(bad), "--jsonl", str(tmp_path / "x.jsonl")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("Error:") and "Traceback" not in proc.stderr


def test_time_to_accuracy_runs_its_seeds_through_the_sweep(tmp_path, synthetic_dir):
    out, jsonl = tmp_path / "tta.json", tmp_path / "tta.jsonl"
    proc = subprocess.run([sys.executable, str(BENCH / "time_to_accuracy.py"), "--data-dir", str(synthetic_dir),
                           "--preset", "smoke", "--seeds", "1", "--device", "cpu", "--target", "0.2", "--out", str(out),
                           "--jsonl", str(jsonl), "--set", "train_limit=200", "--set", "epochs=1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["preset"] == "smoke" and record["n"] == 1 and record["runs"][0]["epochs"] == 1
    assert len(jsonl.read_text().splitlines()) == 1


def test_a_retried_pair_counts_once_and_an_edited_recipe_runs_again(sweep):
    lines = [{"variant": "v", "seed": 0, "status": "failed", "error": "x"},
             {"variant": "v", "seed": 0, "status": "finished", "test_acc": 0.5, "train_seconds": 1.0,
              "seconds_to_target": None, "epoch1_train_loss": 2.0}]
    [v] = sweep.summarize(lines)
    assert v["finished"] == 1 and v["failed"] == 0
    variant = {"name": "v", "preset": "fast", "set": {"lr": 0.2}}
    assert sweep.recipe_key(variant, {"epochs": 2}) == sweep.recipe_key(dict(variant), {"epochs": 2})
    assert sweep.recipe_key(variant, {"epochs": 3}) != sweep.recipe_key(variant, {"epochs": 2})
    assert sweep.recipe_key({**variant, "set": {"lr": 0.4}}, {"epochs": 2}) != sweep.recipe_key(variant, {"epochs": 2})
