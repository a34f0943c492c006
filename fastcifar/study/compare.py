"""`fastcifar compare`: ImageNet-pretrained vs random init, over settings, seeds and training-set fractions.

Owns the experiment: planning the runs (one ordinary run directory per (init, fraction, seed[, setting]) under
`<out>/runs/`), choosing each arm's peak learning rate on the validation split (`lr_grid`: one run per grid value
under `<out>/lr-select/`, first seed, largest fraction), resuming (finished runs are skipped, interrupted ones
continue from their last epoch, setup-only leftovers restart), the robustness evaluation of every final model, and
the two-level progress display. Where the pretrained weights come from is pretrained.py's; results.py turns the
finished runs into numbers, report.py writes them as report.md (markdown.py), the plots (plots.py) and results.json.

Fairness: both arms of a (setting, seed, fraction) share every option, the same first-N training images,
validation split, shuffling and augmentation. They differ in the initial weights, the input normalisation that
goes with them (ImageNet mean/std for pretrained weights, CIFAR-10's for random init; model.json records it) and,
with a grid, in the peak learning rate each arm chose for itself - a pretrained backbone and a random init do not
share an optimum, so one shared lr would bias the answer. The choice sees only validation images, never the test
set. A setting is an (image size, stem) pair: 32 px with the CIFAR stem handicaps ImageNet features by design,
224 px with the ImageNet stem is how they were learned (the original study's setting).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from fastcifar.config import (COMPARE_INITS, ROBUSTNESS_SEVERITIES, CompareConfig, fit_batch,
                              TrainConfig, setting_name)
from fastcifar.errors import FastCifarError
from fastcifar.fileio import write_json
from fastcifar.rundir import (CONFIG_FILE, ENV_FILE, PRETRAINED_FILE, RUN_STATES, TENSORBOARD_DIR, RunDir,
                              read_metrics, read_summary, run_state)
from fastcifar.study import report, sizing
from fastcifar.study.pretrained import resolve_pretrained
from fastcifar.study.results import collect

RUNS_DIR, SELECT_DIR = "runs", "lr-select"
COMPARE_FILE = "compare.json"
SIZING_FILE = "sizing.json"  # how --time-budget sized the study on the machine that started it (study/sizing.py)
# Filled per device when training starts, so a saved config may hold a value where the plan holds None/"auto".
_RESOLVED_FIELDS = {"precision", "channels_last", "compile", "tta"}

RunHook = Callable[[str, int, dict], None]


@dataclass(frozen=True)
class PlannedRun:
    name: str  # <init>-f<fraction>-s<seed>
    init: str  # the arm: imagenet | random
    fraction: float
    seed: int
    cfg: TrainConfig
    n_train: int  # training images after the validation split
    setting: tuple[int, str] = (32, "cifar")  # (image size, stem)

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.out)

    @property
    def key(self) -> tuple[tuple[int, str], str]:
        """(setting, arm): what an lr choice applies to."""
        return self.setting, self.init


@dataclass
class CompareResult:
    out_dir: Path
    results: dict
    files: list[Path]
    counts: dict  # how many runs were already finished / resumed / started by this invocation


def run_name(init: str, fraction: float, seed: int, setting: tuple[int, str] | None = None) -> str:
    return f"{init}-f{fraction:g}-s{seed}" + (f"-{setting_name(setting)}" if setting else "")


def _plan_one(cfg: CompareConfig, pool: int, pretrained_init: str, *, setting: tuple[int, str], init: str,
              fraction: float, seed: int, lr: float, folder: str, suffix: str = "") -> PlannedRun:
    """One run of the experiment: the shared recipe with this point's data, seed, setting, arm and lr."""
    base = cfg.base
    limit = round(fraction * pool)
    if limit < 10:
        raise FastCifarError(f"--fractions {fraction:g} of {pool} training images is {limit} images; a run needs "
                             "at least 10")
    n_train = limit - int(round(limit * base.val_fraction))  # as fastcifar.train.build.split_train_val
    batch, run_lr = fit_batch(base.batch_size, lr, n_train, base.min_steps_per_epoch)
    name = run_name(init, fraction, seed, setting if len(cfg.settings) > 1 else None) + suffix
    # With --tensorboard every run logs under the report, named arm/fraction/seed[/setting][/lrX for an lr-selection
    # run], so one `tensorboard --logdir REPORT/tensorboard` overlays both arms, all seeds and fractions.
    tb_parts = [init, f"f{fraction:g}", f"s{seed}"] + ([setting_name(setting)] if len(cfg.settings) > 1 else [])
    run_cfg = replace(base, init=pretrained_init if init == "imagenet" else "random", seed=seed, train_limit=limit,
                      batch_size=batch, lr=run_lr, image_size=setting[0], stem=setting[1],
                      backbone_lr_scale=base.backbone_lr_scale if init == "imagenet" else 1.0,
                      out=str(Path(cfg.out) / folder / name),
                      tensorboard_dir=str(Path(cfg.out, TENSORBOARD_DIR, *tb_parts, suffix.strip("-") or ""))
                      if base.tensorboard else None)
    return PlannedRun(name=name, init=init, fraction=fraction, seed=seed, cfg=run_cfg, n_train=n_train,
                      setting=setting)


def _pool(cfg: CompareConfig, n_available: int) -> int:
    return min(cfg.base.train_limit or n_available, n_available)


def plan_selection(cfg: CompareConfig, n_available: int, pretrained_init: str) -> list[PlannedRun]:
    """The lr-selection runs: every grid value for each (setting, arm), first seed, largest fraction."""
    if cfg.lr_grid is None:
        return []
    pool = _pool(cfg, n_available)
    return [_plan_one(cfg, pool, pretrained_init, setting=setting, init=init, fraction=cfg.fractions[-1],
                      seed=cfg.seeds[0], lr=lr, folder=SELECT_DIR, suffix=f"-lr{lr:g}")
            for setting in cfg.settings for init in COMPARE_INITS for lr in cfg.lr_grid]


def plan_runs(cfg: CompareConfig, n_available: int, pretrained_init: str,
              lrs: dict | None = None) -> list[PlannedRun]:
    """Every run, seed-major: after the first seed the report already has one point per (init, fraction).

    `lrs` maps (setting, arm) to the chosen peak lr (default: base.lr for both). With a grid, the run of the first
    seed at the largest fraction is the selection run of the chosen lr (same data, seed and lr), reused as it is.
    """
    pool = _pool(cfg, n_available)
    runs = []
    for seed in cfg.seeds:
        for setting in cfg.settings:
            for fraction in cfg.fractions:
                for init in COMPARE_INITS:
                    lr = (lrs or {}).get((setting, init), cfg.base.lr)
                    reused = lrs is not None and is_selection_point(cfg, seed, fraction)
                    runs.append(_plan_one(cfg, pool, pretrained_init, setting=setting, init=init, fraction=fraction,
                                          seed=seed, lr=lr, folder=SELECT_DIR if reused else RUNS_DIR,
                                          suffix=f"-lr{lr:g}" if reused else ""))
    return runs


def is_selection_point(cfg: CompareConfig, seed: int, fraction: float) -> bool:
    """True for the (seed, fraction) whose runs the lr selection already trains (first seed, largest fraction)."""
    return cfg.lr_grid is not None and seed == cfg.seeds[0] and fraction == cfg.fractions[-1]


def choose_lrs(cfg: CompareConfig, selection: list[PlannedRun]) -> tuple[dict, dict]:
    """Each (setting, arm)'s peak lr: the grid value with the best final validation accuracy (ties: the smaller).

    Returns (lrs for plan_runs, the record for results.json: per setting name, per arm grid / val_acc / chosen).
    """
    lrs, record = {}, {}
    for setting in cfg.settings:
        for init in COMPARE_INITS:
            runs = [r for r in selection if r.key == (setting, init)]
            val = [read_summary(r.run_dir)["val_acc"] for r in runs]
            best = max(range(len(runs)), key=lambda i: (val[i], -i))
            lrs[setting, init] = cfg.lr_grid[best]
            record.setdefault(setting_name(setting), {})[init] = {
                "grid": list(cfg.lr_grid), "val_acc": val, "chosen": cfg.lr_grid[best], "seed": runs[0].seed,
                "fraction": runs[0].fraction, "n_val": runs[0].cfg.train_limit - runs[0].n_train,
                "runs": [str(Path(SELECT_DIR) / r.name) for r in runs]}
    return lrs, record


# ---------------------------------------------------------------------------------------------- report directory


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

    requested = _pool(cfg, n_available)
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


def _resume(run: PlannedRun, hook):
    from fastcifar.train.loop import resume

    return resume(run.run_dir, progress=False, on_epoch_end=hook)


def _start(run: PlannedRun, hook):
    from fastcifar.train.loop import train

    if run.run_dir.exists():  # setup-only leftovers (no state.pt): nothing trained, nothing to keep
        RunDir(run.run_dir).remove()
    return train(run.cfg, progress=False, on_epoch_end=hook)


RUN_ACTIONS: dict[str, Callable] = {"interrupted": _resume, "new": _start}  # finished runs are skipped


def compare(cfg: CompareConfig, *, progress: bool = True, on_epoch_end: RunHook | None = None,
            command: list[str] | None = None) -> CompareResult:
    """Choose each arm's lr (with a grid), train every planned run not finished yet, write the report to `cfg.out`.

    `on_epoch_end(run_name, epoch, metrics)` is called after each epoch of each run (raising KeyboardInterrupt
    there stops the compare resumably). `command` is recorded in env.json (default: sys.argv).
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
    display = _Progress(selection + later, states, progress)
    display.log(_plan_line(cfg, selection, later, states, source))
    with display:
        for run in selection:
            _execute(run, states[run.name], display, on_epoch_end, out)
        lrs, lr_record = choose_lrs(cfg, selection) if selection else (None, None)
        if lr_record:
            display.log(_selection_line(lr_record))
        runs = plan_runs(cfg, n_available, source["init"], lrs)
        rest = [run for run in runs if not is_selection_point(cfg, run.seed, run.fraction)]  # trained above
        for run in rest:
            if states[run.name] != "new":
                check_run_config(run)
        for run in rest:
            _execute(run, states[run.name], display, on_epoch_end, out)
    for run in runs if cfg.robustness_severities else []:  # every final model, cached in its run directory
        ensure_robustness(run, dataset.test, cfg.base.device, display.log, cfg.robustness_severities)
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


def ensure_robustness(run: PlannedRun, test, device: str, log: Callable[[str], None],
                      severities: tuple[int, ...] = ROBUSTNESS_SEVERITIES) -> dict:
    """The run's final model on the test split: calibration and accuracy under every corruption at
    `severities` (fastcifar.robustness; fp32, no TTA). Cached in the run directory: a rerun of compare
    reuses it, and nothing here trains."""
    cached = RunDir(run.run_dir).read_robustness()
    if cached is not None:
        return cached
    import numpy as np
    import torch

    from fastcifar.models import load_model
    from fastcifar.preprocess import make_pixel_pipeline
    from fastcifar.robustness import corruption_names, evaluate_logits
    from fastcifar.runtime import resolve_device

    resolved = resolve_device(device)
    model, spec, _ = load_model(run.run_dir, device=resolved)
    # The pipeline `fastcifar evaluate --backend torch --precision fp32` runs (uint8 pixels in, the training
    # loader's preprocessing inside), in batches of 256 as predictors do: one evaluation path, fp32 on any device.
    pipeline = make_pixel_pipeline(model, spec.mean, spec.std, spec.image_size).to(resolved)

    def logits(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return np.concatenate([pipeline(torch.from_numpy(pixels[i:i + 256]).to(resolved)).cpu().numpy()
                                   for i in range(0, len(pixels), 256)])

    log(f"evaluating {run.name}: calibration and {len(corruption_names())} corruptions at severities "
        f"{', '.join(map(str, severities))}")
    result = evaluate_logits(logits, test.images, test.labels, corruptions=corruption_names(),
                             severities=severities, device=str(resolved))
    RunDir(run.run_dir).write_robustness(result)
    return result


def _execute(run: PlannedRun, state: str, display: "_Progress", hook: RunHook | None, out: Path) -> None:
    if state == "finished":
        return
    display.start_run(run)

    def on_epoch(epoch: int, metrics: dict) -> None:
        display.epoch_done(run, epoch, metrics)
        if hook is not None:
            hook(run.name, epoch, metrics)

    try:
        result = RUN_ACTIONS[state](run, on_epoch)
    except FastCifarError as exc:
        if exc.exit_code == 130:
            raise FastCifarError(f"interrupted in {run.name}; every finished run and that run's last finished "
                                 f"epoch are kept. Rerun the same command (--out {out}) to continue.",
                                 exit_code=130) from None
        raise FastCifarError(f"{run.name}: {exc}", exit_code=exc.exit_code) from None
    display.run_done(run, result.summary)


def _plan_line(cfg: CompareConfig, selection: list[PlannedRun], later: list[PlannedRun], states: dict,
               source: dict) -> str:
    done = sum(s == "finished" for s in states.values())
    warning = ("compare: WARNING - no ImageNet weights, so both arms start from random weights: this report checks "
               "the pipeline and the noise level, not pretraining. For the real comparison pass --pretrained-weights "
               "(or go online) with a new --out.\n" if source["kind"] == "stand-in" else "")
    settings = ", ".join(f"{size} px with the {stem} stem" for size, stem in cfg.settings)
    lr = (f"each arm's peak lr chosen from {', '.join(f'{v:g}' for v in cfg.lr_grid)} on the validation split "
          f"({len(selection)} selection runs, first seed, largest fraction, reused as that point's runs)"
          if cfg.lr_grid else f"one shared peak lr {cfg.base.lr:g}")
    return warning + (
        f"compare: {len(selection) + len(later)} runs = 2 inits x {len(cfg.settings)} setting(s) x {len(cfg.seeds)} "
        f"seed(s) x {len(cfg.fractions)} fraction(s) ({', '.join(f'{f:g}' for f in cfg.fractions)}), {cfg.base.arch} "
        f"at {settings}, {cfg.base.epochs} epochs, preset {cfg.base.preset}, device {cfg.base.device}; {lr}; "
        f"{done} already finished.\ncompare: pretrained arm = {source['label']}.\n"
        f"compare: report directory {cfg.out} (rerun the same command to resume)")


def _selection_line(record: dict) -> str:
    return "\n".join(f"compare: lr chosen on validation ({name}): " + "; ".join(
        f"{init} {arm['chosen']:g} (val acc " + ", ".join(f"{lr:g}: {100 * v:.1f} %" for lr, v in
                                                         zip(arm["grid"], arm["val_acc"])) + ")"
        for init, arm in arms.items()) for name, arms in record.items())


class _Progress:
    """An overall bar (runs done / total, ETA weighted by images to train) over the current run's epoch bar.

    Each run trains with its own display off (two rich consoles would fight over the terminal), so the current
    run advances per epoch; one plain line per epoch and per run keeps a log readable when stderr is a file.
    """

    def __init__(self, runs: list[PlannedRun], states: dict, enabled: bool):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=self.console, disable=not enabled, transient=True,
                                 speed_estimate_period=24 * 3600)  # epochs can be minutes apart on a CPU
        self.total, self.done = len(runs), sum(s == "finished" for s in states.values())
        done_work = sum(r.n_train * r.cfg.epochs for r in runs if states[r.name] == "finished")
        self.total_work = sum(r.n_train * r.cfg.epochs for r in runs)
        self.work = done_work  # images x epochs trained so far (finished runs included)
        self.work_here, self.started = 0, time.monotonic()  # trained by this invocation: its pace gives the ETA
        self.overall = self.progress.add_task("all runs", total=self.total_work, completed=done_work,
                                              count=self._count())
        self.current = self.progress.add_task("run", total=1, count="", visible=False)
        self.epochs_seen = 0

    def _count(self) -> str:
        return f"{self.done}/{self.total} runs"

    def _eta(self) -> str:
        """'~N min left' for the training still to do, at this invocation's pace (evaluation included in it)."""
        if not self.work_here:
            return ""
        left = (self.total_work - self.work) * (time.monotonic() - self.started) / self.work_here
        return f", training ~{left / 60:.0f} min left" if left >= 60 else f", training ~{left:.0f} s left"

    def _advance(self, images: int) -> None:
        self.progress.advance(self.overall, images)
        self.work += images

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def log(self, message: str) -> None:
        self.console.print(message, highlight=False, markup=False, soft_wrap=True)  # no wrap at 80 in logs

    def start_run(self, run: PlannedRun) -> None:
        self.epochs_seen = len(read_metrics(run.run_dir))
        self._advance(run.n_train * self.epochs_seen)
        self.progress.reset(self.current, total=run.cfg.epochs, completed=self.epochs_seen, visible=True,
                            description=run.name, count=f"epoch {self.epochs_seen}/{run.cfg.epochs}")
        self.log(f"{'resuming' if self.epochs_seen else 'starting'} {run.name} ({run.n_train:,} training images, "
                 f"batch {run.cfg.batch_size}, lr {run.cfg.lr:g})")

    def epoch_done(self, run: PlannedRun, epoch: int, m: dict) -> None:
        self._advance(run.n_train * (epoch - self.epochs_seen))
        self.work_here += run.n_train * (epoch - self.epochs_seen)
        self.epochs_seen = epoch
        self.progress.update(self.current, completed=epoch, count=f"epoch {epoch}/{run.cfg.epochs}")
        test = "-" if m.get("test_acc") is None else f"{100 * m['test_acc']:.2f} %"
        self.log(f"  {run.name} epoch {epoch}/{run.cfg.epochs}: train loss {m['train_loss']:.3f}, test acc {test}, "
                 f"{m['train_seconds']:.1f} s{self._eta()}")

    def run_done(self, run: PlannedRun, summary: dict) -> None:
        self.done += 1
        self.progress.update(self.overall, count=self._count())
        self.log(f"finished {run.name}: test acc {100 * summary['test_acc']:.2f} %, {summary['train_seconds']:.1f} s "
                 f"training ({self.done}/{self.total} runs done{self._eta()})")
