"""bench/sweep.py: a plan of stages run in one process, one JSON line per run, resumable across processes and GPU
runs; its planner orders and budgets the runs; the plans the GPU check runs are valid; one failing run (a missing
module included) is recorded and the next run still runs; bench/time_to_accuracy.py runs through it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastcifar.errors import FastCifarError

BENCH = Path(__file__).resolve().parents[1] / "bench"
TOY = ["--set", "train_limit=200", "--set", "epochs=2", "--set", "batch_size=32", "--set", "stem=imagenet",
       "--set", "compile=false", "--set", "lr=0.05", "--set", "warmup_epochs=0.4", "--set", "val_fraction=0.1"]


def load_sweep():
    spec = importlib.util.spec_from_file_location("bench_sweep", BENCH / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while they are built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sweep():
    return load_sweep()


def write_plan(path: Path, stages: list, **extra) -> Path:
    path.write_text(json.dumps({"target": 0.3, "preset": "fast", **extra, "stages": stages}))
    return path


LEVERS_PLAN = [
    {"stage": "candidate", "seeds": 1, "variants": [{"name": "all", "set": {"label_smoothing": 0.2, "ema": 0.9}}]},
    {"stage": "levers", "seeds": 1, "variants": [{"name": "plain", "set": {}},
                                                 {"name": "ls", "set": {"label_smoothing": 0.2}},
                                                 {"name": "ema", "set": {"ema": 0.9}}]},
    {"stage": "seeds-of-best", "seeds": 3},
    {"stage": "timed", "seeds": 1, "set": {"compile": True}},
]


def test_the_planner_orders_by_the_next_decision_and_fits_the_budget(tmp_path, sweep):
    plan = sweep.load_plan(write_plan(tmp_path / "p.json", LEVERS_PLAN))
    cost = {False: 20.0, True: 50.0}

    def planned(lines, budget):
        return [(r.stage, r.variant.name, r.seed, s) for r, s in sweep.plan_runs(
            plan, lines, base={}, budget_s=budget, cost=lambda run: cost[run.compiled])]

    everything = planned([], None)
    assert [(stage, name, seed) for stage, name, seed, _ in everything] == [
        ("candidate", "all", 0), ("levers", "plain", 0), ("levers", "ls", 0), ("levers", "ema", 0),
        ("seeds-of-best", "all", 1), ("seeds-of-best", "all", 2), ("timed", "all", 0)]
    assert sum(s for *_, s in everything) == 6 * 20 + 50
    fits = planned([], 100.0)  # five eager runs fit; the compiled one does not
    assert [n for _, n, _, _ in fits] == ["all", "plain", "ls", "ema", "all"] and sum(s for *_, s in fits) <= 100
    fits = planned([], 55.0)  # two eager runs, then nothing more fits
    assert len(fits) == 2 and sum(s for *_, s in fits) <= 55

    # Once the levers are measured the best is known: its further seeds and its timed run follow it.
    def line(name, seed, acc, extra=None, stage="levers"):
        v = next(v for v in plan.variants() if v.name == name)
        return {"variant": name, "seed": seed, "status": "finished", "test_acc": acc, "stage": stage,
                "recipe": sweep.recipe_key(plan, v, extra or {}, {})}

    lines = [line("all", 0, 0.5, stage="candidate"), line("plain", 0, 0.4), line("ls", 0, 0.7), line("ema", 0, 0.6)]
    assert [(stage, name, seed) for stage, name, seed, _ in planned(lines, None)] == [
        ("seeds-of-best", "ls", 1), ("seeds-of-best", "ls", 2), ("timed", "ls", 0)]
    # A finished line with another recipe (the plan was edited) does not count as done.
    lines[1]["recipe"] = "0" * 12
    assert ("levers", "plain", 0) in [(st, n, s) for st, n, s, _ in planned(lines, None)]


def test_costs_come_from_this_machines_runs_once_it_has_any(tmp_path, sweep):
    plan = sweep.load_plan(write_plan(tmp_path / "p.json", LEVERS_PLAN, cost_s={"eager": 30, "compiled": 70}))
    assert sweep.estimate_cost(plan, [], "gpu", compiled=False) == 30
    lines = [{"machine": "gpu", "status": "finished", "compile": False, "wall_seconds": w} for w in (10, 12, 50)]
    lines.append({"machine": "other", "status": "finished", "compile": False, "wall_seconds": 1})
    assert sweep.estimate_cost(plan, lines, "gpu", compiled=False) == 12  # the median of this machine's
    assert sweep.estimate_cost(plan, lines, "gpu", compiled=True) == 70


def test_a_plan_runs_in_one_process_one_line_per_run_and_resumes(tmp_path, synthetic_dir, sweep, capsys):
    plan = write_plan(tmp_path / "p.json", [
        {"stage": "listed", "seeds": 2, "variants": [
            {"name": "plain", "set": {}}, {"name": "smooth", "set": {"label_smoothing": 0.2, "alternating_flip": True}}]}])
    jsonl, epochs = tmp_path / "runs.jsonl", tmp_path / "epochs.jsonl"
    loads = []
    import fastcifar.data.datasets as datasets

    real = datasets.load_dataset
    datasets.load_dataset = lambda *a, **k: loads.append(1) or real(*a, **k)
    try:
        args = ["--data-dir", str(synthetic_dir), "--plan", str(plan), "--jsonl", str(jsonl), "--device", "cpu",
                "--epochs-jsonl", str(epochs), "--summary-out", str(tmp_path / "summary.json"), *TOY]
        assert sweep.main(args) == 0
    finally:
        datasets.load_dataset = real
    assert loads == [1]  # the data files are read once for all four runs
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [(r["variant"], r["seed"]) for r in lines] == [("plain", 0), ("smooth", 0), ("plain", 1), ("smooth", 1)]
    for r in lines:
        assert r["status"] == "finished" and 0 <= r["test_acc"] <= 1 and r["train_seconds"] > 0
        assert r["loader"] == "tensor" and r["precision"] == "fp32" and r["compile"] is False
        assert r["compile_record"] is None  # eager: nothing compiled
        assert r["epochs"] == 2 and r["n_train"] == 180 and len(r["test_acc_per_epoch"]) == 2
        assert r["state_save_seconds"] == 0 and r["epoch1_train_loss"] > 0  # sweep runs write no state.pt
    assert lines[1]["levers"] == ["label smoothing 0.2", "alternating flip"] and lines[0]["levers"] == []
    per_epoch = [json.loads(line) for line in epochs.read_text().splitlines()]
    assert [(e["variant"], e["seed"], e["epoch"]) for e in per_epoch][:2] == [("plain", 0, 1), ("plain", 0, 2)]
    assert len(per_epoch) == 8 and all(e["test_acc"] is not None for e in per_epoch)
    table = capsys.readouterr().out
    assert "| plain | 2 |" in table and "| smooth | 2 |" in table and "eager" in table
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [v["variant"] for v in summary["variants"]] == ["plain", "smooth"]
    assert summary["variants"][0]["test_acc"]["n"] == 2
    # A rerun skips the runs already done (a sweep cut by its time limit continues where it stopped) ...
    assert sweep.main(args) == 0
    assert len(jsonl.read_text().splitlines()) == 4
    # ... and so does another sweep given them as --previous (an earlier GPU run's committed results).
    other = tmp_path / "second.jsonl"
    assert sweep.main([*args[:4], "--jsonl", str(other), "--previous", str(jsonl), *args[6:]]) == 0
    assert not other.exists()


def test_a_failing_run_is_recorded_and_the_next_still_runs(tmp_path, synthetic_dir, sweep, monkeypatch):
    """A module missing at run time (the GPU machine may lack one) fails that run, not the sweep."""
    plan = sweep.load_plan(write_plan(tmp_path / "p.json", [{"stage": "listed", "seeds": 1, "variants": [
        {"name": "needs-a-module", "set": {"tta_translate": True}}, {"name": "plain", "set": {}}]}]))
    import fastcifar.train.loop as loop

    real = loop.train

    def train(cfg, **kwargs):
        if cfg.tta_translate:
            raise ModuleNotFoundError("No module named 'rich'")
        return real(cfg, **kwargs)

    monkeypatch.setattr(loop, "train", train)
    lines = sweep.run_sweep(plan, data_dir=str(synthetic_dir), jsonl=tmp_path / "r.jsonl", device="cpu",
                            base_overrides={"train_limit": 100, "stem": "imagenet", "epochs": 1, "compile": False,
                                            "batch_size": 32})
    assert [(r["variant"], r["status"]) for r in lines] == [("needs-a-module", "failed"), ("plain", "finished")]
    assert "ModuleNotFoundError: No module named 'rich'" in lines[0]["error"]
    assert sweep.summarize(lines)[0]["failed"] == 1


def test_a_run_that_cannot_start_is_recorded(tmp_path, synthetic_dir, sweep):
    plan = sweep.load_plan(write_plan(tmp_path / "p.json", [{"stage": "listed", "seeds": 1, "variants": [
        {"name": "too-big", "set": {"batch_size": 5000, "min_steps_per_epoch": 0}}]}]))
    lines = sweep.run_sweep(plan, data_dir=str(synthetic_dir), jsonl=tmp_path / "r.jsonl", device="cpu",
                            base_overrides={"train_limit": 100, "stem": "imagenet"})
    assert lines[0]["status"] == "failed" and "cannot fill one batch" in lines[0]["error"]


@pytest.mark.parametrize("name", ["gpu.json", "seed.json", "dry-run.json"])
def test_the_checks_plans_are_valid(name, sweep):
    plan = sweep.load_plan(BENCH / "plans" / name)  # validates every variant's config, levers included
    assert 0 < plan.target < 1 and plan.variants()
    if name == "gpu.json":  # accuracy runs eager, one compiled run of the best for time to target
        assert plan.accuracy_set == {"compile": False}
        assert [s["stage"] for s in plan.stages] == ["candidate", "levers", "seeds-of-best", "timed"]
        assert plan.stages[-1]["set"] == {"compile": True}


def test_bad_plans_and_overrides_are_one_message(tmp_path, sweep):
    with pytest.raises(FastCifarError, match="TrainConfig field"):
        sweep.parse_overrides(["nonsense=1"])
    with pytest.raises(FastCifarError, match="not a valid"):
        sweep.parse_overrides(["epochs=many"])
    assert sweep.parse_overrides(["ema=none", "whiten_stem=true", "lr=0.1"]) == {"ema": None, "whiten_stem": True,
                                                                                   "lr": 0.1}
    bad = tmp_path / "bad.json"
    cases = {
        "{": "cannot read",
        json.dumps({"stages": []}): "non-empty 'stages'",
        json.dumps({"stages": [{"stage": "what"}]}): "must be one of",
        json.dumps({"stages": [{"stage": "listed", "variants": [{"name": "a", "set": {"x": 1}}]}]}): "unknown",
        json.dumps({"stages": [{"stage": "listed", "variants": [{"name": "a"}, {"name": "a"}]}]}): "used twice",
        json.dumps({"stages": [{"stage": "listed", "variants": [{"name": "a", "set": {"lr": "fast"}}]}]}):
            "lr must be float",
        json.dumps({"stages": [{"stage": "listed", "variants": [{"name": "a", "preset": "nope"}]}]}): "unknown preset",
        json.dumps({"stages": [{"stage": "listed", "variants": [{"name": "a", "set": {"lr": -1}}]}]}): "--lr must",
        json.dumps({"stages": [{"stage": "seeds-of-best", "seeds": 2}]}): "needs a stage with variants",
        json.dumps({"stages": [{"stage": "listed", "seeds": 0, "variants": [{"name": "a"}]}]}): "'seeds'",
    }
    for content, message in cases.items():
        bad.write_text(content)
        with pytest.raises(FastCifarError, match=message):
            sweep.load_plan(bad)
    bad.write_text(json.dumps({"stages": [{"stage": "listed", "variants": [{"name": "a", "set": {"lr": "fast"}}]}]}))
    proc = subprocess.run([sys.executable, str(BENCH / "sweep.py"), "--data-dir", str(tmp_path), "--plan",
                           str(bad), "--jsonl", str(tmp_path / "x.jsonl")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("Error:") and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.jsonl").exists()  # checked before anything ran


def _sweep_stopped_at_seed_1(tmp_path, synthetic_dir, sweep, monkeypatch, capsys, stop: BaseException):
    """A 3-seed sweep whose second run raises `stop`: (exit code, stderr, seeds started, each JSON line's status)."""
    plan = write_plan(tmp_path / "p.json", [{"stage": "listed", "seeds": 3, "variants": [{"name": "a", "set": {}}]}])
    import fastcifar.train.loop as loop

    real, calls = loop.train, []

    def train(cfg, **kwargs):
        calls.append(cfg.seed)
        if cfg.seed == 1:
            raise stop
        return real(cfg, **kwargs)

    monkeypatch.setattr(loop, "train", train)
    jsonl = tmp_path / "r.jsonl"
    code = sweep.main(["--data-dir", str(synthetic_dir), "--plan", str(plan), "--jsonl", str(jsonl), "--device", "cpu",
                       "--set", "train_limit=100", "--set", "stem=imagenet", "--set", "epochs=1", "--set", "batch_size=32"])
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    return code, capsys.readouterr().err, calls, [(r["seed"], r["status"]) for r in lines]


def test_ctrl_c_is_one_message_and_keeps_the_finished_runs(tmp_path, synthetic_dir, sweep, monkeypatch, capsys):
    code, err, calls, lines = _sweep_stopped_at_seed_1(tmp_path, synthetic_dir, sweep, monkeypatch, capsys,
                                                       KeyboardInterrupt())
    assert code == 130 and "Error: interrupted" in err and "Traceback" not in err.split("Error: interrupted")[1]
    assert calls == [0, 1] and lines == [(0, "finished")]


def test_a_run_stopped_by_sigterm_stops_the_sweep_with_143(tmp_path, synthetic_dir, sweep, monkeypatch, capsys):
    """train turns SIGTERM into a clean stop with exit code 143 (the GPU check's step limit sends it): the sweep stops
    too, records that run nowhere (it is not a failed run) and starts no other."""
    from fastcifar.train.guards import PREEMPTED_EXIT

    stop = FastCifarError("stopped by SIGTERM after step 3/4 of epoch 1", exit_code=PREEMPTED_EXIT)
    code, err, calls, lines = _sweep_stopped_at_seed_1(tmp_path, synthetic_dir, sweep, monkeypatch, capsys, stop)
    assert code == 143 and "Error: stopped by SIGTERM; every finished run is in" in err, err[-2000:]
    assert calls == [0, 1] and lines == [(0, "finished")]


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


def test_a_retried_pair_counts_once(sweep):
    lines = [{"variant": "v", "seed": 0, "status": "failed", "error": "x"},
             {"variant": "v", "seed": 0, "status": "finished", "test_acc": 0.5, "train_seconds": 1.0,
              "seconds_to_target": None, "epoch1_train_loss": 2.0}]
    [v] = sweep.summarize(lines)
    assert v["finished"] == 1 and v["failed"] == 0
