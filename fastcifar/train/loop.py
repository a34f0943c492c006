"""Training: `train(cfg) -> TrainResult`, one step function with precision/compile/channels_last as switches.

Owns the training loop, its run directory (config.json, env.json, metrics.jsonl, state.pt, model.safetensors,
model.json, summary.json - all written atomically, by rank 0 only), resume, Ctrl-C handling, the non-finite
loss guard, the divergence warning, the compile warm-up outside the clock and DDP under torchrun. The loop
reads top to bottom (nanoGPT's style); the pieces it assembles (`prepare_run_dir`, `build_model`,
`build_data`, `build_optimizer`, `make_step`, `save_state`, ...) live beside it: build.py (run directory, model,
data, levers), step.py (optimizer, schedule, EMA, precision, the step, warm-up), checkpoint.py (state.pt),
distributed.py (torchrun) and progress.py (what the run shows).
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from fastcifar.config import TrainConfig
from fastcifar.errors import FastCifarError
from fastcifar.fileio import write_json, write_jsonl
from fastcifar.rundir import (CONFIG_FILE, ENV_FILE, GIT_DIFF_FILE, METRICS_FILE, STATE_FILE, SUMMARY_FILE, is_finished,
                              read_metrics, write_results_csv)
from fastcifar.runtime import dist_info_from_env, env_info, resolve_device

NONFINITE_CHECK_EVERY = 25  # steps between host syncs of the non-finite guard (each sync stalls the GPU)
# The divergence guard warns when the loss is this far above ln(classes) (2.30 for 10): healthy starts measured
# 2.19-2.46, blown-up runs 2.58-3.8 (GPU presets with 48 steps per epoch, small CPU runs with 7-21; bench/README.md).
DIVERGENCE_MARGIN = 0.2
# The plain recipe measured on an H100 (../shared/measurements/gpu-2026-11-26.md): the divergence advice scales it.
MEASURED_LR, MEASURED_BATCH = 0.2, 512


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict


class NonFiniteLoss(FastCifarError):
    pass


EpochHook = Callable[[int, dict], None]


def train(cfg: TrainConfig, *, progress: bool | str = True, resume_dir: Path | None = None,
          on_epoch_end: EpochHook | None = None, warm_up: bool | None = None, keep_state: bool = False,
          dataset=None) -> TrainResult:
    """Train `cfg` (or continue the run in `resume_dir`) and return the run directory and summary.

    `progress`: 'bar' (True), 'lines' (the run header and one plain line per epoch, for logs) or 'off' (False).
    `on_epoch_end(epoch, metrics)` is called on rank 0 after each epoch's state is saved (compare's progress
    display uses it; raising KeyboardInterrupt there stops the run resumably). `warm_up` (default: when compiling)
    runs two throw-away steps before the clock starts, so compile time stays out of `train_seconds`; the summary
    reports it apart as `compile_warmup_seconds`. A finished run keeps what serving and reporting need; its
    state.pt (optimizer, RNG: ~90 MB for a ResNet-18, only for resuming) is removed unless `keep_state`.
    `dataset`: an already loaded `CifarData` to train on instead of reading `cfg.data_dir` (bench/sweep.py runs
    many configs in one process and reads the files once).
    """
    import torch

    from fastcifar.train import build, checkpoint, step
    from fastcifar.train.distributed import destroy_distributed, init_distributed

    dist = dist_info_from_env()
    device = resolve_device(cfg.device, dist.local_rank)
    cfg = cfg.resolved(device.type)
    if device.type == "cuda":
        # Every training batch has the same shape, so cuDNN's per-shape autotuning pays once; the anchor run that
        # set it was ~6 % faster (airbench94 sets it too). Evaluation's ragged last batch tunes once more.
        torch.backends.cudnn.benchmark = True
    init_distributed(dist, device)
    try:
        # The dataset, then the model (its classes are the dataset's; a bad --init fails before anything is
        # created), then the directory, then the loaders.
        dataset = dataset if dataset is not None else build.load_data(cfg, dist)
        cfg, fitted = build.fit_to_data(cfg, len(dataset.train), dist.world_size)
        if fitted and dist.is_main and progress:
            print(f"small data: {fitted}", file=sys.stderr, flush=True)
        model, spec = build.build_model(cfg, device, dataset.class_names)
        run_dir, created = build.prepare_run_dir(cfg, resume_dir, dist)
        try:
            data = build.build_data(cfg, spec, dist, device, dataset)
            if dist.is_main and resume_dir is None:
                write_json(run_dir / CONFIG_FILE, cfg.to_dict())
                write_env(run_dir, device)
            levers = build.apply_levers(model, spec, cfg, data.train_images)  # freezes before the optimizer
            opt = step.build_optimizer(model, cfg, len(data.train), device)
            ema = step.build_ema(model, cfg, len(data.train))
            scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
            start_epoch, history, train_seconds = 0, [], 0.0
            if resume_dir is not None:
                start_epoch, train_seconds = checkpoint.load_state(run_dir / STATE_FILE, model, opt, ema, scaler,
                                                                   device)
                history = read_metrics(run_dir)[:start_epoch]
                if dist.is_main:  # epochs after the last saved state are trained again: drop their lines
                    write_jsonl(run_dir / METRICS_FILE, history)
                    write_results_csv(run_dir, history)
            elif dist.is_main and cfg.save_state_every:  # a state from the first moment: Ctrl-C in epoch 1 resumes
                checkpoint.save_state(run_dir / STATE_FILE, 0, 0.0, model, opt, ema, scaler)
            loop = _Loop(cfg, dist, device, model, opt, ema, scaler, data, run_dir, levers, spec, start_epoch)
            loop.fitted = fitted
            if cfg.compile if warm_up is None else warm_up:
                loop.warm_up()
        except BaseException:
            if created is not None:  # failed before its first epoch: leave nothing behind (never a user's dir)
                shutil.rmtree(created, ignore_errors=True)
            raise
        try:
            try:
                history, train_seconds = loop.run(start_epoch, history, train_seconds, progress, on_epoch_end)
            except KeyboardInterrupt:
                if not (run_dir / STATE_FILE).is_file():
                    raise FastCifarError(f"interrupted; {run_dir} has no state to resume from "
                                         "(--save-state-every 0)", exit_code=130) from None
                raise FastCifarError(f"interrupted; the state of the last saved epoch is in {run_dir}. "
                                     f"Continue with: fastcifar train --resume {run_dir}", exit_code=130) from None
            summary = _finish(loop, spec, history, train_seconds)
        finally:
            if loop.records is not None:  # TensorBoard's writer thread ends with the run, finished or not
                loop.records.close()
            if loop.compile_record is not None:  # stop listening to dynamo's log (idempotent)
                loop.compile_record.finish()
        if dist.is_main and not keep_state:  # finished: nothing left to resume, and it is the largest file
            (run_dir / STATE_FILE).unlink(missing_ok=True)
        return TrainResult(run_dir=run_dir, summary=summary)
    finally:
        destroy_distributed(dist)


class _Loop:
    """The epoch loop and the one step function; holds what every epoch needs."""

    def __init__(self, cfg, dist, device, model, opt, ema, scaler, data, run_dir, levers=(), spec=None,
                 start_epoch=0):
        import torch

        from fastcifar.train.distributed import wrap_distributed
        from fastcifar.train.step import CompileRecord, autocast_factory, make_step

        self.cfg, self.dist, self.device, self.model = cfg, dist, device, model
        self.optimizer, self.scheduler = opt
        self.ema, self.scaler, self.data, self.run_dir = ema, scaler, data, run_dir
        self.levers = list(levers)
        self.state_seconds = 0.0  # wall time spent writing state.pt (outside the training clock)
        self.final_eval = None  # the last epoch's evaluation with predictions, kept for the summary
        self.records = None
        if dist.is_main:
            from fastcifar.train.records import RunRecords

            self.records = RunRecords(cfg, run_dir, spec, dataset_extra(data, run_dir, cfg), start_epoch)
        self.autocast = autocast_factory(cfg.precision, device)
        self.compile_record = CompileRecord(model, cfg.compile_mode) if cfg.compile else None
        self.net = wrap_distributed(model, dist, device)
        self.step = make_step(self.net, self.optimizer, self.scheduler, self.scaler, self.autocast,
                              torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
                              # The scheduler's step count is a host int: the EMA decides when to average
                              # without reading anything back from the device.
                              ema_update=None if ema is None else lambda: ema.update(self.scheduler.last_epoch))
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.num_classes = model.fc.out_features
        self.warmup_seconds = None
        self.fitted = None  # the small-data note (build.fit_to_data), when the batch was shrunk

    def warm_up(self) -> None:
        from fastcifar.train.step import warm_up

        self.warmup_seconds = warm_up(self.step, self.model, (self.optimizer, self.scheduler), self.ema, self.scaler,
                                      batch_size=self.data.train_options.batch_size, image_size=self.cfg.image_size,
                                      num_classes=self.num_classes, memory_format=self.memory_format,
                                      device=self.device)
        if self.dist.is_main:
            print(f"compile warm-up: {self.warmup_seconds:.1f} s (kept out of the training time)", file=sys.stderr,
                  flush=True)

    def train_epoch(self, epoch: int, bar) -> dict:
        import torch

        loader = self.data.train
        loader.set_epoch(epoch)
        self.model.train()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        late_sum = torch.zeros((), device=self.device, dtype=torch.float64)  # the epoch's second half
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        first_bad = torch.full((), -1, device=self.device, dtype=torch.int64)
        seen = late_seen = 0
        half = len(loader) // 2
        start = time.perf_counter()
        for i, (images, labels) in enumerate(loader):
            loss, right = self.step(images.contiguous(memory_format=self.memory_format), labels)
            step_no = epoch * len(loader) + i + 1
            bad = ~torch.isfinite(loss) & (first_bad < 0)
            first_bad = torch.where(bad, torch.full_like(first_bad, step_no), first_bad)
            loss_sum += loss.double() * len(labels)
            if i >= half:
                late_sum += loss.double() * len(labels)
                late_seen += len(labels)
            correct += right
            seen += len(labels)
            if (i + 1) % NONFINITE_CHECK_EVERY == 0 or i + 1 == len(loader):
                self._check_finite(first_bad)
            bar.advance(len(labels) * self.dist.world_size)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        counts = torch.tensor([float(seen), float(late_seen)], device=self.device, dtype=torch.float64)
        totals = self._all_reduce(torch.cat([torch.stack([loss_sum, late_sum, correct.double()]), counts]))
        n, n_late = max(float(totals[3]), 1.0), max(float(totals[4]), 1.0)
        return {"train_loss": float(totals[0]) / n, "train_loss_second_half": float(totals[1]) / n_late,
                "train_acc": float(totals[2]) / n, "train_seconds": seconds,
                "images_per_second": n / max(seconds, 1e-9)}

    def _check_finite(self, first_bad) -> None:
        step = int(self._all_reduce(first_bad.double(), op="max"))
        if step >= 0:
            kept = (f"the state of the last saved epoch is in {self.run_dir / STATE_FILE}"
                    if (self.run_dir / STATE_FILE).is_file() else "no state.pt was kept (--save-state-every 0)")
            raise NonFiniteLoss(f"the training loss became NaN/inf at step {step}; the run stopped. Lower --lr "
                                f"or use --precision fp32/bf16 ({kept}).")

    def _all_reduce(self, tensor, op: str = "sum"):
        if not self.dist.enabled:
            return tensor
        import torch.distributed as td

        tensor = tensor.clone()
        td.all_reduce(tensor, op={"sum": td.ReduceOp.SUM, "max": td.ReduceOp.MAX}[op])
        return tensor

    def eval_model(self):
        """The EMA's average once it has started (a run shorter than --ema-start-epochs has only live weights)."""
        return self.ema.module if self.ema is not None and self.ema.updates else self.model

    def evaluate_epoch(self, keep_predictions: bool = False) -> dict:
        from fastcifar.train.tta import evaluate

        out, results = {}, {}
        for name, loader in (("val", self.data.val), ("test", self.data.test)):
            if loader is None:
                out.update({f"{name}_loss": None, f"{name}_acc": None})
                continue
            result = evaluate(self.eval_model(), loader, tta=self.cfg.tta, translate=self.cfg.tta_translate,
                              autocast=self.autocast, keep_predictions=keep_predictions)
            out.update(result.as_dict(name))
            results[name] = result
        return (out, results) if keep_predictions else out

    def run(self, start_epoch, history, train_seconds, progress, on_epoch_end):
        from fastcifar.train import checkpoint
        from fastcifar.train.progress import EpochProgress, progress_mode

        mode = progress_mode(progress) if self.dist.is_main else "off"
        with EpochProgress(self.cfg, self.data, start_epoch, mode) as bar:
            bar.header(self.device, self.data, self.run_dir, start_epoch, self.levers)
            if self.records is not None and self.records.header():
                print(self.records.header(), file=sys.stderr, flush=True)
            for epoch in range(start_epoch, self.cfg.epochs):
                bar.start_epoch(epoch)
                metrics = {"epoch": epoch + 1, **self.train_epoch(epoch, bar)}
                last = epoch + 1 == self.cfg.epochs
                if self.dist.is_main:
                    if last:  # the summary needs the predictions: evaluate once, keep them
                        self.final_eval = self.evaluate_epoch(keep_predictions=True)
                        metrics.update(self.final_eval[0])
                    else:
                        metrics.update(self.evaluate_epoch())
                train_seconds += metrics["train_seconds"]
                metrics["elapsed_train_seconds"] = train_seconds
                metrics["lr"] = self.scheduler.get_last_lr()[0]  # where the schedule stands after the epoch
                history.append(metrics)
                if self.dist.is_main:
                    self.records.epoch(metrics, history, self.eval_model())
                    every = self.cfg.save_state_every
                    if every and ((epoch + 1) % every == 0 or last):
                        start = time.perf_counter()
                        checkpoint.save_state(self.run_dir / STATE_FILE, epoch + 1, train_seconds, self.model,
                                   (self.optimizer, self.scheduler), self.ema, self.scaler)
                        self.state_seconds += time.perf_counter() - start
                    bar.log_epoch(metrics)
                    warning = divergence_warning(metrics, self.cfg, len(self.data.train), self.num_classes)
                    if warning:
                        print(f"WARNING: {warning}", file=sys.stderr, flush=True)
                    if on_epoch_end is not None:
                        on_epoch_end(epoch + 1, metrics)
        return history, train_seconds


def _finish(loop: _Loop, spec, history: list[dict], train_seconds: float) -> dict:
    """Final evaluation with predictions, model files and summary.json (rank 0); DDP consistency record."""
    import numpy as np

    from fastcifar.models import save_model
    from fastcifar.train.distributed import distributed_record
    from fastcifar.train.step import warmup_steps

    cfg, dist = loop.cfg, loop.dist
    distributed = distributed_record(loop.model, loop.data, dist) if dist.enabled else None
    if not dist.is_main:
        return {}
    # The last epoch's evaluation, unless the run was resumed after it (then evaluate now).
    metrics, results = loop.final_eval if loop.final_eval is not None else loop.evaluate_epoch(keep_predictions=True)
    test = results["test"]
    confusion = np.zeros((spec.num_classes, spec.num_classes), dtype=np.int64)
    np.add.at(confusion, (test.labels, test.predictions), 1)
    # Throughput excludes the first epoch when there are more: it carries compile and cudnn warm-up.
    steady = [h["images_per_second"] for h in history[1:]] or [h["images_per_second"] for h in history]
    summary = {
        "status": "finished", "epochs": cfg.epochs, **metrics,
        "train_seconds": train_seconds, "images_per_second": float(np.median(steady)),
        "time_to_90pct_final_test_acc": _time_to_fraction(history, metrics["test_acc"], 0.9),
        "per_class_test_acc": [float(confusion[c, c] / max(confusion[c].sum(), 1)) for c in range(len(confusion))],
        "confusion": confusion.tolist(), "class_names": list(spec.class_names),
        "n_train": loop.data.n_train, "n_val": loop.data.n_val, "n_test": loop.data.n_test,
        "dataset": loop.data.info.get("dataset", "cifar10"), "dataset_skipped": loop.data.info.get("skipped_summary"),
        "arch": cfg.arch, "init": spec.init, "stem": cfg.stem, "image_size": cfg.image_size, "seed": cfg.seed,
        "precision": cfg.precision, "channels_last": cfg.channels_last, "compile": cfg.compile,
        "device": str(loop.device), "loader": loop.data.kind, "world_size": dist.world_size,
        "distributed": distributed, "compile_warmup_seconds": loop.warmup_seconds,
        "state_save_seconds": loop.state_seconds, "levers": loop.levers, "augmentation": cfg.augmentation(),
        "small_data": loop.fitted, "batch_size": cfg.batch_size, "lr": cfg.lr,
        "warmup_steps": warmup_steps(cfg, len(loop.data.train)),
        "best": loop.records.best_summary(metrics["test_acc"]),
        "cudnn_benchmark": _cudnn_benchmark(loop.device), "compile_mode": cfg.compile_mode,
        "compile_record": loop.compile_record.finish() if loop.compile_record is not None else None,
        "warnings": [w for h in history if (w := divergence_warning(h, cfg, len(loop.data.train),
                                                                     loop.num_classes))],
    }
    save_model(loop.eval_model(), spec, loop.run_dir, metrics=metrics,
               extra=dataset_extra(loop.data, loop.run_dir, cfg))
    write_json(loop.run_dir / SUMMARY_FILE, summary)
    loop.records.finish(summary, confusion)
    return summary


def dataset_extra(data, run_dir: Path, cfg: TrainConfig) -> dict:
    """What model.json records about the data: where it is, which dataset (the verbs that read a model's test split
    later read the same one: fastcifar/data/datasets.model_split), the run's name and its augmentation."""
    info = data.info
    extra = {"data_dir": str(data.root), "run_name": run_dir.name, "augmentation": cfg.augmentation()}
    if info.get("dataset", "cifar10") != "cifar10":  # CIFAR-10 runs keep the model.json they always had
        extra.update(dataset=info["dataset"], dataset_info={k: v for k, v in info.items() if k != "class_names"})
    if data.test_files is not None:  # an image folder: the run's test images by name, so a change cannot move them
        extra["dataset_info"]["test_files"] = data.test_files
    return extra


def write_env(run_dir: Path, device) -> None:
    """env.json: versions, machine, git sha and whether the tree was dirty (with the diff's hash), the device; the
    diff itself as git.diff beside it when it is small (runtime.GIT_DIFF_KEEP_BYTES)."""
    import torch

    from fastcifar.runtime import GIT_DIFF_KEEP_BYTES, cpu_name, git_diff

    diff = git_diff()  # read once: git.diff and env.json's hash of it describe the same tree
    env = env_info(diff=diff)
    env["device"] = str(device)
    env["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    write_json(run_dir / ENV_FILE, env)
    if diff and len(diff.encode()) <= GIT_DIFF_KEEP_BYTES:
        from fastcifar.fileio import write_text

        write_text(run_dir / GIT_DIFF_FILE, diff)


def _cudnn_benchmark(device) -> bool | None:
    import torch

    return bool(torch.backends.cudnn.benchmark) if device.type == "cuda" else None


def divergence_warning(metrics: dict, cfg: TrainConfig, steps_per_epoch: int, num_classes: int) -> str | None:
    """A warning when the epoch that ends the first epoch or the warm-up still trains clearly above ln(num_classes) -
    worse than guessing, the mark of a run that blew up - else None. Never stops the run.

    Judged on the mean loss of the epoch's second half (`train_loss_second_half`; the whole epoch's mean when it is
    not recorded), against ln(classes) + DIVERGENCE_MARGIN: a healthy random init starts near ln(classes) and can sit
    a little above it through a short first epoch (2.19-2.46 measured), while the blown-up runs measured were above
    that (2.58-3.8, on a GPU and in small CPU runs of 7-21 steps per epoch alike). The advice always changes something
    that is measured to help: the lr down to the measured recipe scaled to this batch, else a longer warm-up, else a
    smaller batch with more steps (test: following it gives a run that does not diverge).
    """
    from fastcifar.train.step import warmup_steps

    epoch = metrics["epoch"]
    loss = metrics.get("train_loss_second_half", metrics["train_loss"])
    warm = warmup_steps(cfg, steps_per_epoch)
    warmup_end = min(max(1, math.ceil(warm / max(steps_per_epoch, 1))), cfg.epochs)
    chance = math.log(num_classes)
    if epoch not in (1, warmup_end) or not loss > chance + DIVERGENCE_MARGIN:
        return None
    when = "the first epoch" if epoch == 1 else f"warm-up (epoch {epoch})"
    recipe_lr = MEASURED_LR * cfg.batch_size / MEASURED_BATCH  # the measured recipe, scaled linearly to this batch
    total = cfg.epochs * steps_per_epoch
    if cfg.lr > recipe_lr * 1.01:
        longer = f" --warmup-epochs {0.2 * cfg.epochs:g}" if cfg.warmup_epochs < 0.2 * cfg.epochs else ""
        fix = (f"--lr {recipe_lr:.3g}{longer} (the measured plain recipe: lr {MEASURED_LR:g} at batch "
               f"{MEASURED_BATCH}, scaled to batch {cfg.batch_size}, warm-up 20 % of the steps)")
    elif warm < total // 2:
        fix = (f"--warmup-epochs {min(cfg.epochs / 2, max(2 * warm, 1) / steps_per_epoch):.3g} (a warm-up of "
               f"{min(total // 2, max(2 * warm, 1))} steps instead of {warm})")
    else:
        fix = (f"--lr {cfg.lr / 2:.3g} --batch-size {max(cfg.batch_size // 2, 1)} (twice the steps, each half as "
               "large)")
    return (f"the mean training loss at the end of {when} is {loss:.2f}, above ln({num_classes}) = {chance:.2f} (the "
            f"loss of guessing): the run has probably diverged. Likely cause: peak learning rate {cfg.lr:g} is too "
            f"high for batch {cfg.batch_size} with a {warm}-step warm-up ({steps_per_epoch} steps per epoch). "
            f"Fix: {fix}.")


def _time_to_fraction(history: list[dict], final: float | None, fraction: float) -> float | None:
    """Training seconds until test accuracy first reached `fraction` of its final value; None when only the last
    epoch did (that figure would just repeat the training time: no earlier epoch got there)."""
    if final is None:
        return None
    for h in history[:-1]:
        if h.get("test_acc") is not None and h["test_acc"] >= fraction * final:
            return h["elapsed_train_seconds"]
    return None


def resume(run_dir: Path | str, *, progress: bool | str = True, on_epoch_end: EpochHook | None = None,
           keep_state: bool = False) -> TrainResult:
    """Continue an interrupted run from its last finished epoch (optimizer, scheduler, RNG, EMA, scaler)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise FastCifarError(f"cannot resume {run_dir}: it has no {CONFIG_FILE} (is it a fastcifar run directory?)")
    cfg = TrainConfig.load(run_dir / CONFIG_FILE)
    if is_finished(run_dir):
        raise FastCifarError(f"{run_dir} already finished ({cfg.epochs} epochs); nothing to resume")
    if not (run_dir / STATE_FILE).is_file():
        raise FastCifarError(f"cannot resume {run_dir}: it has no {STATE_FILE} (the state of its last epoch)")
    return train(replace(cfg, out=str(run_dir)), progress=progress, resume_dir=run_dir, on_epoch_end=on_epoch_end,
                 keep_state=keep_state)
