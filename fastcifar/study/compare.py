"""`fastcifar compare`: ImageNet-pretrained vs random init, over settings, seeds and training-set fractions.

Owns the experiment's course: the report directory (refusing another experiment's, locked while it writes: one
compare per report; what killed writes left is removed), the time budget (sizing.py),
each arm's lr choice, training or resuming every planned run (run_plan.py) with the progress display
(study_progress.py), the robustness evaluation of every final model, and the report (report.py). Entry point:
`compare(cfg)`. What makes the comparison fair (shared images, splits and options; each arm's own lr chosen on
validation only) is in docs/compare.md.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from fastcifar.config import CompareConfig, TrainConfig, setting_name
from fastcifar.errors import FastCifarError
from fastcifar.fileio import (DirLock, first_missing, holds_nothing, is_leftover, read_json, remove_empty_dirs,
                              remove_leftovers, write_json)
from fastcifar.rundir import CONFIG_FILE, ENV_FILE, PRETRAINED_FILE, RUN_STATES, RunDir, run_state
from fastcifar.study import report, sizing
from fastcifar.study.one_run import ensure_robustness, train_or_resume
from fastcifar.study.run_plan import (RUNS_DIR, SELECT_DIR, PlannedRun, choose_lrs, is_selection_run, plan_runs,
                                      plan_selection, pool_size)
from fastcifar.study.pretrained import resolve_pretrained
from fastcifar.study.study_progress import StudyProgress, plan_line, selection_line
from fastcifar.study.results import collect
from fastcifar.train.guards import PREEMPTED_EXIT

COMPARE_FILE = "compare.json"
SIZING_FILE = "sizing.json"  # how --time-budget sized the study on the machine that started it (study/sizing.py)
# Each invocation's wall time and the runs it trained or resumed, kept as it goes: results.json's `wall` is the
# study's whole cost, not only the last command's (a resumed study trained its runs in earlier invocations).
INVOCATIONS_FILE = "invocations.json"
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
    """`cfg` sized to fit `cfg.time_budget_s` on this machine (study/sizing.py): first the axes `budget_steps` drops,
    in its order, then the training pool shrinks; and the record of that decision (None without a budget). A report
    directory that already holds a decision keeps it, so a rerun continues the same experiment."""
    if not cfg.time_budget_s:
        return cfg, None
    saved = Path(cfg.out) / SIZING_FILE
    if saved.is_file():
        record = read_json(saved, "how --time-budget sized this study",
                           "restore it, or move it away to size the study again (the training pool may change)")
        if not isinstance(record.get("pool"), int):
            raise FastCifarError(f"{saved} is damaged (no training pool); restore it, or move it away to size the "
                                 "study again (the training pool may change)")
        return _sized(cfg, record), record
    severities = cfg.robustness_severities
    costs, device = sizing.probe(cfg.base, cfg.settings, cfg.base.device,
                                 severity=severities[len(severities) // 2] if severities else 3)

    def parts(candidate: CompareConfig, pool: int, clock: str = "wall") -> dict:
        trained, final = _budgeted_runs(_with_pool(candidate, pool), n_available)
        return sizing.estimate_parts(trained, final, {k: c[clock] for k, c in costs.items()}, n_test, severities)

    requested = pool_size(cfg, n_available)
    steps = budget_steps(cfg)
    for chosen, dropped in steps:  # the first that fits at the full pool; else the last, on a smaller pool
        if sum(parts(chosen, requested).values()) <= sizing.BUDGET_SHARE * cfg.time_budget_s:
            break
    pool, seconds = sizing.fit(requested, cfg.time_budget_s, lambda candidate: sum(parts(chosen, candidate).values()))
    record = {"budget_s": cfg.time_budget_s, "device": device,
              "images_per_s": min(1 / c["wall"].train for c in costs.values()),
              "rates": {setting_name(k): 1 / c["wall"].train for k, c in costs.items()},
              "costs": {setting_name(k): {clock: c[clock].to_dict() for clock in c} for k, c in costs.items()},
              "requested_pool": requested, "requested_estimate_s": sum(parts(cfg, requested).values()),
              "dropped": dropped, "axes": {"label_noise": list(chosen.label_noise),
                                           "scratch_epochs": list(chosen.scratch_epochs)},
              "pool": pool, "estimate_s": seconds, "estimate": parts(chosen, pool),
              "estimate_cpu": parts(chosen, pool, "cpu")}
    log(f"compare: {sizing.describe(record)}")
    return _sized(cfg, record), record


def budget_steps(cfg: CompareConfig) -> list[tuple[CompareConfig, list[str]]]:
    """`cfg`, then `cfg` with each further axis a --time-budget drops before it shrinks the training pool, each with
    the list of what it dropped so far. The order (docs/compare.md, "The time budget"): the intermediate label-noise
    levels (the highest stays: the question is the gap under heavy noise), then the remaining noisy level, then the
    scratch arm's longer schedules, longest first. Never dropped: an arm (the linear probe costs one backbone pass
    per image, less than one fine-tuning epoch), a seed or a fraction (the comparison itself)."""
    steps, dropped = [(cfg, [])], []
    noise, epochs = list(cfg.label_noise), list(cfg.scratch_epochs)
    while len(noise) > 1:
        level = noise.pop(-2 if len(noise) > 2 else -1)
        dropped.append(f"label noise {level:g}")
        steps.append((replace(cfg, label_noise=tuple(noise)), list(dropped)))
    while len(epochs) > 1:
        dropped.append(f"scratch at {epochs.pop()}x epochs")
        steps.append((replace(cfg, label_noise=tuple(noise), scratch_epochs=tuple(epochs)), list(dropped)))
    return steps


def _sized(cfg: CompareConfig, record: dict) -> CompareConfig:
    """`cfg` as a sizing decision left it: its training pool and the axes it kept (a record from before the axes
    existed keeps them all)."""
    axes = record.get("axes") or {}
    cfg = replace(cfg, label_noise=tuple(axes.get("label_noise", cfg.label_noise)),
                  scratch_epochs=tuple(axes.get("scratch_epochs", cfg.scratch_epochs)))
    return _with_pool(cfg, record["pool"])


def _budgeted_runs(cfg: CompareConfig, n_available: int) -> tuple[list[PlannedRun], list[PlannedRun]]:
    """(every run the study trains: the lr-selection runs and the final runs they are not; the final runs, whose
    models the robustness pass evaluates) - what the budget's estimate prices. Run names and sizes do not depend on
    the lr, so a plan with 'imagenet' for the pretrained init stands in for any."""
    final = plan_runs(cfg, n_available, "imagenet")
    trained = plan_selection(cfg, n_available, "imagenet") + [
        r for r in final if not is_selection_run(cfg, r)]
    return trained, final


def record_actual(out: Path, cfg: CompareConfig, n_available: int, record: dict, wall_s: float,
                  counts: dict) -> dict:
    """sizing.json with `actual`: what the estimated parts took by each clock, read from the runs' records (all of
    the study's invocations: sizing.actual_parts) and set against the estimate, beside this command's own wall time
    and whether it continued an earlier one (its wall time then covers only the work left)."""
    trained, final = _budgeted_runs(cfg, n_available)

    def against(estimate: dict | None, clock: str) -> dict:
        actual = sizing.actual_parts(trained, final, cfg.robustness_severities, clock)
        estimate = estimate or {}  # a decision recorded before its parts were
        total = sum(estimate.get(part, 0.0) for part in sizing.PARTS)
        actual["ratio"] = actual["total_s"] / total if actual["total_s"] is not None and total else None
        actual["ratios"] = {part: actual[part] / estimate[part] if actual[part] is not None and estimate.get(part)
                            else None for part in sizing.PARTS}
        return actual

    actual = against(record.get("estimate"), "wall")
    actual.update(cpu=against(record.get("estimate_cpu"), "cpu"), command_wall_s=wall_s,
                  resumed=bool(counts["finished"] or counts["interrupted"]))
    record = {**record, "actual": actual}
    write_json(out / SIZING_FILE, record)
    return record


def _with_pool(cfg: CompareConfig, pool: int) -> CompareConfig:
    return replace(cfg, base=replace(cfg.base, train_limit=pool))


def _log_line(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def check_report_dir(cfg: CompareConfig, sized: bool = False) -> Path:
    """The report directory, refusing one made by another experiment (or not by compare at all). `sized`: compare
    only what --time-budget does not decide (the training pool and the axes it drops are its decisions)."""
    out = Path(cfg.out)
    saved = out / COMPARE_FILE
    if saved.is_file():
        old = CompareConfig.load(saved)
        old_dict, new_dict = old.to_dict(), cfg.to_dict()
        if sized:  # what a budget decides: the pool and the axes it dropped
            for d in (old_dict, new_dict):
                d["base"].pop("train_limit", None)
                d.pop("label_noise", None)
                d.pop("scratch_epochs", None)
        diffs = _config_diffs(old_dict, new_dict)
        if diffs:
            raise FastCifarError(f"{out} holds a report made with other options ({'; '.join(diffs[:6])}). Rerun "
                                 f"with the same options to continue it, or choose another --out")
    elif out.exists() and not out.is_dir():
        raise FastCifarError(f"--out {out} is a file, not a directory; choose another --out")
    elif out.exists() and not holds_nothing(out):  # what a study killed before compare.json left may be reused
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
    from fastcifar.runtime import resolve_device

    started = time.perf_counter()
    check_report_dir(cfg, sized=(Path(cfg.out) / SIZING_FILE).is_file())
    # What the user typed fails before the data loads (minutes for a download or an image folder). The device only
    # without Ray: a Ray cluster's workers may have GPUs this machine lacks.
    if ray is None:
        resolve_device(cfg.base.device)
    if cfg.pretrained_weights and not Path(cfg.pretrained_weights).is_file():
        raise FastCifarError(f"--pretrained-weights {cfg.pretrained_weights} does not exist or is not a file")
    created = first_missing(Path(cfg.out))
    try:
        with DirLock(cfg.out, "--out"):  # one compare per report directory, for the whole command
            clean_report_dir(Path(cfg.out))
            return _compare(cfg, started, progress=progress, on_epoch_end=on_epoch_end, command=command, ray=ray)
    except BaseException:
        if created is not None:  # a study that failed before writing anything leaves no empty --out behind
            remove_empty_dirs(created)
        raise


def clean_report_dir(out: Path) -> None:
    """Remove the temp files killed writes left: the report's own, and each run's (each under its own lock)."""
    removed = remove_leftovers(out)
    if removed:
        print(f"{out}: removed {len(removed)} temp file(s) a killed write left ({', '.join(removed)})",
              file=sys.stderr, flush=True)
    for run_dir in sorted(p for folder in (RUNS_DIR, SELECT_DIR) for p in (out / folder).glob("*")):
        # only a run a killed write left something in is opened (RunDir.open cleans under the run's lock): a
        # finished run stays untouched, its files and directory times included
        if run_dir.is_dir() and any(is_leftover(p.name, foreign=True) for p in run_dir.iterdir()):
            RunDir.open(run_dir).release()


def _compare(cfg: CompareConfig, started: float, *, progress: bool, on_epoch_end: RunHook | None,
             command: list[str] | None, ray) -> CompareResult:
    """compare() under the report directory's lock, from the data on."""
    from fastcifar.data.datasets import load_dataset
    from fastcifar.runtime import env_info

    check_report_dir(cfg, sized=(Path(cfg.out) / SIZING_FILE).is_file())  # again, under the lock
    dataset = load_dataset(cfg.base.data_dir, cfg.base.dataset, download=cfg.base.download, progress=progress)
    n_available = len(dataset.train)
    plan_runs(cfg, n_available, "imagenet")  # bad fractions fail here, before anything is written
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
    later = [r for r in plan_runs(cfg, n_available, source["init"]) if not is_selection_run(cfg, r)]
    states = {run.name: run_state(run.run_dir) for run in selection + later}
    for run in selection:
        if states[run.name] != "new":
            check_run_config(run)
    display = StudyProgress(selection + later, states, progress)
    display.log(plan_line(cfg, selection, later, states, source))
    invocations = Invocations(out, started, [name for name, state in states.items() if state == "finished"])
    if ray is None:
        runner = LocalRuns(display, on_epoch_end, out, invocations)
    else:
        from fastcifar.study.ray_runs import RayRuns

        runner = RayRuns(ray, display, out)
    with display, runner:
        runner.train(selection, states)  # the lr choice needs every selection run: they finish first
        lrs, lr_record = choose_lrs(cfg, selection) if selection else (None, None)
        if lr_record:
            display.log(selection_line(lr_record))
        runs = plan_runs(cfg, n_available, source["init"], lrs)
        rest = [run for run in runs if not is_selection_run(cfg, run)]  # trained above
        for run in rest:
            if states[run.name] != "new":
                check_run_config(run)
        runner.train(rest, states)
        if cfg.robustness_severities:  # every final model, cached in its run directory
            runner.evaluate([r for r in runs if r.core], dataset.test, cfg.base.device, cfg.robustness_severities)
            # the runs of the axes beyond the clean study: calibration on the clean test images only (the noise
            # axis asks about calibration; corruptions there would multiply the evaluation for a side question)
            if any(not r.core for r in runs):
                runner.evaluate([r for r in runs if not r.core], dataset.test, cfg.base.device, ())
    counts = {state: sum(s == state for s in states.values()) for state in RUN_STATES}
    wall = invocations.done([name for name, state in states.items() if state != "finished"],
                            [run.name for run in runs])
    if sizing is not None:
        sizing = record_actual(out, cfg, n_available, sizing, wall["last"]["seconds"], counts)
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


class Invocations:
    """invocations.json (INVOCATIONS_FILE): one entry per compare command on this report - when it started, its wall
    seconds and the runs it trained or resumed - rewritten after each run it finishes, so a killed command's work
    still counts when a later one writes the report."""

    def __init__(self, out: Path, started: float, reused: list[str]):
        self.path, self.started = out / INVOCATIONS_FILE, started
        self.entries = self._read()
        self.entry = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": 0.0, "trained": [],
                      "reused": sorted(reused), "completed": False}
        self.entries.append(self.entry)
        self._write()

    def _read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        entries = read_json(self.path, "the wall time of this study's earlier commands",
                            "move it away (the report then counts this command's time only)").get("invocations")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise FastCifarError(f"{self.path} is damaged (no list of invocations); move it away (the report then "
                                 "counts this command's time only)")
        return entries

    def _write(self) -> None:
        self.entry["seconds"] = time.perf_counter() - self.started
        write_json(self.path, {"invocations": self.entries})

    def run_started(self, name: str) -> None:
        """Recorded before the run trains: a command killed during it or right after it still counts it."""
        if name not in self.entry["trained"]:
            self.entry["trained"].append(name)
        self._write()

    def run_done(self) -> None:
        self._write()

    def done(self, trained: list[str], runs: list[str]) -> dict:
        """This command finished: its entry completed; returns results.json's `wall` (the study's whole cost)."""
        self.entry["trained"] = sorted(set(self.entry["trained"]) | set(trained))
        self.entry["completed"] = True
        self._write()
        ever = {name for e in self.entries for name in e.get("trained", []) if name in runs}
        return {"seconds": sum(float(e.get("seconds") or 0.0) for e in self.entries),
                "invocations": len(self.entries), "trained": len(ever), "reused": len(set(runs) - ever),
                "last": {"seconds": self.entry["seconds"], "trained": len(trained),
                         "reused": len(set(runs) - set(trained))}}


class LocalRuns:
    """The runs one after another in this process, with per-epoch progress (ray_runs.RayRuns is the other way)."""

    def __init__(self, display: StudyProgress, hook: RunHook | None, out: Path, invocations: Invocations | None = None):
        self.display, self.hook, self.out, self.invocations = display, hook, out, invocations

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def train(self, runs: list[PlannedRun], states: dict) -> None:
        for run in runs:
            record = states[run.name] != "finished" and self.invocations is not None
            if record:
                self.invocations.run_started(run.name)
            _execute(run, states[run.name], self.display, self.hook, self.out)
            if record:
                self.invocations.run_done()

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
