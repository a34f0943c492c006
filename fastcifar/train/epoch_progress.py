"""What a training run shows while it runs: a rich progress bar on a terminal, or the run header and one plain line
per epoch on stderr for logs (nohup, CI, cluster jobs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fastcifar.config import TrainConfig, describe_augmentation
from fastcifar.errors import FastCifarError

if TYPE_CHECKING:
    from fastcifar.train.build import TrainData


PROGRESS_MODES = ("bar", "lines", "off")


def progress_mode(progress) -> str:
    """'bar' (a rich bar on a terminal), 'lines' (plain lines for logs: nohup, CI, cluster jobs) or 'off';
    True/False mean 'bar'/'off'."""
    mode = {True: "bar", False: "off"}.get(progress, progress) if isinstance(progress, bool) else progress
    if mode not in PROGRESS_MODES:
        raise FastCifarError(f"progress must be one of {', '.join(PROGRESS_MODES)}, got {progress!r}")
    return mode


class EpochProgress:
    """A rich progress bar over images (run total + current epoch) - in 'bar' mode - and, in 'bar' and 'lines'
    modes, the run header and one printed line per epoch on stderr."""

    def __init__(self, cfg: TrainConfig, data: TrainData, start_epoch: int, mode: str):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

        self.cfg, self.enabled = cfg, mode != "off"
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)  # soft wrap: one line per epoch in logs
        per_epoch = len(data.train) * data.train_options.batch_size * data.train_options.world_size
        self.progress = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                                 "img", TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
                                 disable=mode != "bar", transient=True)
        self.run_task = self.progress.add_task("run", total=per_epoch * cfg.epochs, completed=per_epoch * start_epoch)
        self.epoch_task = self.progress.add_task("epoch", total=per_epoch)

    def header(self, device, data: TrainData, run_dir: Path, start_epoch: int, levers=()) -> None:
        """The run's facts before its first epoch: device, precision, loader, images, batches, where it goes."""
        if not self.enabled:
            return
        cfg = self.cfg
        speed = f"{cfg.precision}{', channels_last' if cfg.channels_last else ''}{', compiled' if cfg.compile else ''}"
        self.console.print(
            f"train: {cfg.arch} ({cfg.init} init, {cfg.stem} stem, {cfg.image_size} px) on {device} ({speed}), "
            f"{data.kind} loader, {data.n_train:,} training / {data.n_val:,} val / {data.n_test:,} test images, "
            f"{len(data.train)} batches of {cfg.batch_size} per epoch, lr {cfg.lr:g}, epochs "
            f"{start_epoch + 1}-{cfg.epochs} -> {run_dir}", markup=False)
        info = data.info
        if info.get("dataset", "cifar10") != "cifar10":
            self.console.print(f"data: {info['dataset']} at {info.get('root')}, {len(info.get('class_names') or [])} "
                               f"classes, test split: {info.get('test_source')}"
                               + (f"; {info['skipped_summary']}" if info.get("skipped_summary") else "")
                               + "".join(f"; {note}" for note in info.get("notes") or []), markup=False)
        self.console.print(f"augmentation: {describe_augmentation(cfg.augmentation())}", markup=False)
        if levers:
            self.console.print("levers: " + "; ".join(levers), markup=False)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def start_epoch(self, epoch: int) -> None:
        self.progress.reset(self.epoch_task, description=f"epoch {epoch + 1}/{self.cfg.epochs}")

    def advance(self, n: int) -> None:
        self.progress.advance(self.epoch_task, n)
        self.progress.advance(self.run_task, n)

    def log_epoch(self, m: dict) -> None:
        if not self.enabled:
            return

        def pct(v):
            return "  -  " if v is None else f"{100 * v:5.2f}"

        self.console.print(f"epoch {m['epoch']:>3}/{self.cfg.epochs}  train loss {m['train_loss']:.4f} acc "
                           f"{pct(m['train_acc'])}  val {pct(m.get('val_acc'))}  test {pct(m.get('test_acc'))}  "
                           f"{m['images_per_second']:,.0f} img/s  {m['train_seconds']:.1f}s")
