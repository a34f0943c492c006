"""`fastcifar compare`: ImageNet-pretrained vs random init, over settings, seeds and training-set fractions.

Owns the experiment's course: the report directory (refusing another experiment's), the time budget (sizing.py),
each arm's lr choice, training or resuming every planned run (run_plan.py) with the progress display
(study_progress.py), the robustness evaluation of every final model, and the report (report.py). Entry point:
`compare(cfg)`. What makes the comparison fair (shared images, splits and options; each arm's own lr chosen on validation only) is in
docs/compare.md.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from fastcifar.config import CompareConfig, TrainConfig, setting_name
from fastcifar.errors import FastCifarError
from fastcifar.fileio import write_json
from fastcifar.rundir import CONFIG_FILE, ENV_FILE, PRETRAINED_FILE, RUN_STATES, run_state
from fastcifar.study import report, sizing
from fastcifar.study.one_run import ensure_robustness, train_or_resume
from fastcifar.study.run_plan import (PlannedRun, choose_lrs, is_selection_point, plan_runs, plan_selection,
                                  pool_size)
from fastcifar.study.pretrained import resolve_pretrained
from fastcifar.study.study_progress import StudyProgress, plan_line, selection_line
from fastcifar.study.results import collect
from fastcifar.train.guards import PREEMPTED_EXIT

COMPARE_FILE = "compare.json"
SIZING_FILE = "sizing.json"  # how --time-budget sized the study on the machine that started it (study/sizing.py)
# Filled per device when training starts, so a saved config may hold a value where the plan holds None/"auto".
_RESOLVED_FIELDS = {"precision", "channels_last", "compile", "tta"}

RunHook = Callable[[str, int, dict], None]


@dataclass
class CompareResult:
    out_dir: Path
    results: dict
    files: list[Path]
    counts: dict  # how many runs were already finished / resumed / started by this invocation


def fit_to_budget(cfg: CompareConfig, n_available: int, n_test: int,
                  log: Callable[[str], None]) -> tuple[CompareConfig, dict | None]:
    """`cfg` with its training pool sized to fit `cfg.time_budget_s` on this machine (study/sizing.py), and the
    record of that decision (None without a budget). A report directory that already holds a decision keeps it, so
    a rerun continues the same experiment."""
    if not cfg.time_budget_s:
        return cfg, None
    saved = Path(cfg.out) / SIZING_FILE
    if saved.is_file():
        record = json.loads(saved.read_text())
        return _with_pool(cfg, record["pool"]), record
    rates, device = sizing.probe_rate(cfg.base, cfg.settings, cfg.base.device)
    tta = cfg.base.tta if cfg.base.tta is not None else cfg.base.flip

    def estimate(pool: int) -> float:
        sized = _with_pool(cfg, pool)
        final = plan_runs(sized, n_available, "random")
        trained = plan_selection(sized, n_available, "random") + [
            r for r in final if not is_selection_point(sized, r.seed, r.fraction)]
        return sizing.estimate_seconds(trained, final, rates, n_test, cfg.robustness_severities, tta)

    requested = pool_size(cfg, n_available)
    pool, seconds = sizing.fit(requested, cfg.time_budget_s, estimate)
    record = {"budget_s": cfg.time_budget_s, "device": device, "images_per_s": min(rates.values()),
              "rates": {setting_name(k): v for k, v in rates.items()}, "requested_pool": requested,
              "requested_estimate_s": estimate(requested), "pool": pool, "estimate_s": seconds}
    log(f"compare: {sizing.describe(record)}")
    return _with_pool(cfg, pool), record


def _with_pool(cfg: CompareConfig, pool: int) -> CompareConfig:
    return replace(cfg, base=replace(cfg.base, train_limit=pool))


def _log_line(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def check_report_dir(cfg: CompareConfig, sized: bool = False) -> Path:
    """The report directory, refusing one made by another experiment (or not by compare at all). `sized`: compare
    only what --time-budget does not decide (the training pool is its decision)."""
    out = Path(cfg.out)
    saved = out / COMPARE_FILE
    if saved.is_file():
        old = CompareConfig.load(saved)
        old_dict, new_dict = old.to_dict(), cfg.to_dict()
        if sized:
            old_dict["base"].pop("train_limit", None)
            new_dict["base"].pop("train_limit", None)
        diffs = _config_diffs(old_dict, new_dict)
        if diffs:
            raise FastCifarError(f"{out} holds a report made with other options ({'; '.join(diffs[:6])}). Rerun "
                                 f"with the same options to continue it, or choose another --out")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FastCifarError(f"{out} exists and is not a compare report directory (no {COMPARE_FILE}); choose "
                             "another --out")
    return out


def _config_diffs(old: dict, new: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key == "out":  # where the report lives is not part of the experiment (it may be moved)
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _config_diffs(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a} -> {b}")
    return diffs


def check_run_config(run: PlannedRun) -> None:
    """An existing run directory must hold the run this plan asks for (guards hand-copied or stale dirs)."""
    saved = TrainConfig.load(run.run_dir / CONFIG_FILE).to_dict()
    wanted = run.cfg.to_dict()
    diffs = [k for k, v in wanted.items() if k not in ("out", "tensorboard_dir") and saved.get(k) != v
             and not (k in _RESOLVED_FIELDS and v in (None, "auto"))]
    if diffs:
        raise FastCifarError(f"{run.run_dir} was trained with other settings ({', '.join(diffs)}) than this "
                             "compare asks for; move it away or choose another --out")


# ---------------------------------------------------------------------------------------------- running




def compare(cfg: CompareConfig, *, progress: bool = True, on_epoch_end: RunHook | None = None,
            command: list[str] | None = None, ray=None) -> CompareResult:
    """Choose each arm's lr (with a grid), train every planned run not finished yet, write the report to `cfg.out`.

    `on_epoch_end(run_name, epoch, metrics)` is called after each epoch of each run (raising KeyboardInterrupt
    there stops the compare resumably; not with `ray`). `command` is recorded in env.json (default: sys.argv).
    `ray` (ray_runs.RayOptions): every run and every robustness evaluation is a Ray task instead, on a local Ray or
    a cluster; the experiment, its report directory and its report are the same.
    """
    from fastcifar.data.datasets import load_dataset
    from fastcifar.runtime import env_info

    started = time.perf_counter()
    check_report_dir(cfg, sized=(Path(cfg.out) / SIZING_FILE).is_file())
    dataset = load_dataset(cfg.base.data_dir, cfg.base.dataset, download=cfg.base.download, progress=progress)
    n_available = len(dataset.train)
    plan_runs(cfg, n_available, "random")  # bad fractions fail here, before anything is written
    cfg, sizing = fit_to_budget(cfg, n_available, len(dataset.test), log=_log_line)
    out = check_report_dir(cfg)
    source = resolve_pretrained(cfg, out)
    env = env_info(command)
    env["command_line"] = shlex.join(env["command"])
    files = ((COMPARE_FILE, cfg.to_dict()), (PRETRAINED_FILE, source), (ENV_FILE, env), (SIZING_FILE, sizing))
    for name, obj in files:
        if obj is not None:
            write_json(out / name, obj)
    selection = plan_selection(cfg, n_available, source["init"])
    # Run directory names do not depend on the lr, so the runs after the selection can be counted (and their
    # states read) before it ends: one progress display and one ETA for the whole experiment.
    later = [r for r in plan_runs(cfg, n_available, source["init"]) if not is_selection_point(cfg, r.seed, r.fraction)]
    states = {run.name: run_state(run.run_dir) for run in selection + later}
    for run in selection:
        if states[run.name] != "new":
            check_run_config(run)
    display = StudyProgress(selection + later, states, progress)
    display.log(plan_line(cfg, selection, later, states, source))
    if ray is None:
        runner = LocalRuns(display, on_epoch_end, out)
    else:
        from fastcifar.study.ray_runs import RayRuns

        runner = RayRuns(ray, display, out)
    with display, runner:
        runner.train(selection, states)  # the lr choice needs every selection run: they finish first
        lrs, lr_record = choose_lrs(cfg, selection) if selection else (None, None)
        if lr_record:
            display.log(selection_line(lr_record))
        runs = plan_runs(cfg, n_available, source["init"], lrs)
        rest = [run for run in runs if not is_selection_point(cfg, run.seed, run.fraction)]  # trained above
        for run in rest:
            if states[run.name] != "new":
                check_run_config(run)
        runner.train(rest, states)
        if cfg.robustness_severities:  # every final model, cached in its run directory
            runner.evaluate(runs, dataset.test, cfg.base.device, cfg.robustness_severities)
    counts = {state: sum(s == state for s in states.values()) for state in RUN_STATES}
    wall = {"seconds": time.perf_counter() - started, "trained": counts["new"] + counts["interrupted"],
            "reused": counts["finished"]}
    results = collect(cfg, source, runs, env, lr_record, wall, dataset=dataset_record(dataset))
    results["sizing"] = sizing
    files = report.write_report(out, results)
    return CompareResult(out_dir=out, results=results, files=files, counts=counts)




def dataset_record(dataset) -> dict:
    """What the report says about the data: which dataset, where, its classes and test split, what was skipped."""
    info = dataset.info
    return {"kind": info.get("dataset", "cifar10"), "root": str(dataset.root), "class_names": list(dataset.class_names),
            "n_train": len(dataset.train), "n_test": len(dataset.test), "test_source": info.get("test_source"),
            "skipped_summary": info.get("skipped_summary"), "notes": list(info.get("notes") or [])}


class LocalRuns:
    """The runs one after another in this process, with per-epoch progress (ray_runs.RayRuns is the other way)."""

    def __init__(self, display: StudyProgress, hook: RunHook | None, out: Path):
        self.display, self.hook, self.out = display, hook, out

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def train(self, runs: list[PlannedRun], states: dict) -> None:
        for run in runs:
            _execute(run, states[run.name], self.display, self.hook, self.out)

    def evaluate(self, runs: list[PlannedRun], test, device: str, severities: tuple[int, ...]) -> None:
        for run in runs:
            ensure_robustness(run.run_dir, test, device, self.display.log, severities)


def _execute(run: PlannedRun, state: str, display: StudyProgress, hook: RunHook | None, out: Path) -> None:
    if state == "finished":
        return
    display.start_run(run)

    def on_epoch(epoch: int, metrics: dict) -> None:
        display.epoch_done(run, epoch, metrics)
        if hook is not None:
            hook(run.name, epoch, metrics)

    try:
        result = train_or_resume(run.cfg, state, on_epoch)
    except FastCifarError as exc:
        if exc.exit_code in (130, PREEMPTED_EXIT):  # Ctrl-C, SIGTERM: the study resumes, not the one run
            how = "interrupted" if exc.exit_code == 130 else "stopped by SIGTERM"
            raise FastCifarError(f"{how} in {run.name}; every finished run and that run's last finished "
                                 f"epoch are kept. Rerun the same command (--out {out}) to continue.",
                                 exit_code=exc.exit_code) from None
        raise FastCifarError(f"{run.name}: {exc}", exit_code=exc.exit_code) from None
    display.run_done(run, result.summary)
