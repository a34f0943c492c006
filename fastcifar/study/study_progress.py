"""What a compare shows while it runs: the plan and lr-choice lines, and a two-level progress display (all runs,
with an estimate of the time left, over the current run's epochs) that also logs one plain line per epoch and
per run, so a log file stays readable."""

from __future__ import annotations

import time

from fastcifar.config import CompareConfig
from fastcifar.models import RESNETS
from fastcifar.rundir import read_metrics
from fastcifar.study.run_plan import PlannedRun


def plan_line(cfg: CompareConfig, selection: list[PlannedRun], later: list[PlannedRun], states: dict,
               source: dict) -> str:
    done = sum(s == "finished" for s in states.values())
    warning = ("compare: WARNING - no ImageNet weights, so both arms start from random weights: this report checks "
               "the pipeline and the noise level, not pretraining. For the real comparison pass --pretrained-weights "
               "(or go online) with a new --out.\n" if source["kind"] == "stand-in" else "")
    own = cfg.base.arch not in RESNETS  # one stem, its own (EfficientNet-Lite0)
    settings = ", ".join(f"{size} px" + ("" if own else f" with the {stem} stem") for size, stem in cfg.settings)
    lr = (f"each arm's peak lr chosen from {', '.join(f'{v:g}' for v in cfg.lr_grid)} on the validation split "
          f"({len(selection)} selection runs, first seed, largest fraction, reused as that point's runs)"
          if cfg.lr_grid else f"one shared peak lr {cfg.base.lr:g}")
    return warning + (
        f"compare: {len(selection) + len(later)} runs = {len(cfg.arms)} arms ({', '.join(cfg.arms)}) x "
        f"{len(cfg.settings)} setting(s) x {len(cfg.seeds)} seed(s) x {len(cfg.fractions)} fraction(s) "
        f"({', '.join(f'{f:g}' for f in cfg.fractions)}){_axes_text(cfg)}, {cfg.base.arch} "
        f"at {settings}, {cfg.base.epochs} epochs, preset {cfg.base.preset}, device {cfg.base.device}; {lr}; "
        f"{done} already finished.\ncompare: pretrained arm = {source['label']}.\n"
        f"compare: report directory {cfg.out} (rerun the same command to resume)")


def _axes_text(cfg: CompareConfig) -> str:
    """The axes beyond arms, seeds and fractions, when used (run_plan.py: which runs they add)."""
    parts = []
    if cfg.scratch_epochs != (1,):
        parts.append(f"scratch also at {', '.join(f'{k}x' for k in cfg.scratch_epochs if k != 1)} the epochs (clean "
                     "labels)")
    if cfg.label_noise != (0.0,):
        parts.append(f"every arm also at label noise {', '.join(f'{p:g}' for p in cfg.label_noise if p)}")
    return f" ({'; '.join(parts)})" if parts else ""


def selection_line(record: dict) -> str:
    return "\n".join(f"compare: lr chosen on validation ({name}): " + "; ".join(
        f"{init} {arm['chosen']:g} (val acc " + ", ".join(f"{lr:g}: {100 * v:.1f} %" for lr, v in
                                                         zip(arm["grid"], arm["val_acc"])) + ")"
        for init, arm in arms.items()) for name, arms in record.items())


class StudyProgress:
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

    def remote_done(self, run: PlannedRun, summary: dict, where: str) -> None:
        """A run that trained elsewhere (a Ray task): its whole work at once, then what run_done says."""
        self._advance(run.n_train * run.cfg.epochs)
        self.work_here += run.n_train * run.cfg.epochs
        self.run_done(run, summary, where)

    def run_done(self, run: PlannedRun, summary: dict, where: str | None = None) -> None:
        self.done += 1
        self.progress.update(self.overall, count=self._count())
        place = f" on {where}" if where else ""
        self.log(f"finished {run.name}{place}: test acc {100 * summary['test_acc']:.2f} %, "
                 f"{summary['train_seconds']:.1f} s training ({self.done}/{self.total} runs done{self._eta()})")
