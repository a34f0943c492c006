"""Training: `train(cfg) -> TrainResult` and `resume(run_dir)`.

`train` reads top to bottom, as torchvision's reference train.py does: `setup` (--init weights, run directory, data,
model, loaders, optimizer, state) -> for each epoch `train_one_epoch`, `evaluate`, `record` -> `finish` (final
evaluation, model, summary). A `Session` is what those stages share. The step and its switches are step.py's, the
run's files are rundir.RunDir's, the guards guards.py's, DDP under torchrun distributed.py's.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from fastcifar.config import TrainConfig
from fastcifar.errors import FastCifarError
from fastcifar.fileio import DiskFull, WriteFailed, holds_nothing
from fastcifar.rundir import CONFIG_FILE, METRICS_FILE, RunDir, is_finished
from fastcifar.runtime import DistInfo, dist_info_from_env, env_info, resolve_device
from fastcifar.train.guards import (NONFINITE_CHECK_EVERY, PREEMPTED_EXIT, NonFiniteLoss, Preempted, StopSignal,
                                    epoch_warnings, nonfinite_message, run_facts, stopped_message)


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict


EpochHook = Callable[[int, dict], None]


@dataclass
class Session:
    """What one run holds while it trains: built by `setup`, read and advanced by the stages."""
    cfg: TrainConfig
    dist: DistInfo
    device: object
    run: RunDir
    spec: object
    data: object  # build.TrainData
    model: object  # the uncompiled module (its state_dict is what is saved)
    step: Callable
    optimizer: object
    scheduler: object
    ema: object
    scaler: object
    autocast: Callable
    memory_format: object
    levers: list
    records: object | None  # records.RunRecords, rank 0 only
    compile_record: object | None
    fitted: str | None  # the small-data note (build.fit_to_data)
    start_epoch: int = 0
    history: list = field(default_factory=list)
    train_seconds: float = 0.0
    state_seconds: float = 0.0  # writing state.pt, outside the training clock
    warmup_seconds: float | None = None
    final_eval: tuple | None = None  # the last epoch's evaluation with predictions, for the summary
    stop: StopSignal = field(default_factory=StopSignal)  # SIGTERM's request to stop at a step boundary
    probe: object | None = None  # linear_probe.Probe for a --linear-probe run: evaluation on cached features

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def eval_model(self):
        """The EMA's average once it has started (a run shorter than --ema-start-epochs has only live weights)."""
        return self.ema.module if self.ema is not None and self.ema.updates else self.model


def train(cfg: TrainConfig, *, progress: bool | str = True, resume_dir: Path | None = None,
          on_epoch_end: EpochHook | None = None, warm_up: bool | None = None, keep_state: bool = False,
          dataset=None) -> TrainResult:
    """Train `cfg` (or continue the run in `resume_dir`) and return the run directory and summary.

    `progress`: 'bar' (True), 'lines' (the run header and one line per epoch, for logs) or 'off' (False).
    `on_epoch_end(epoch, metrics)` runs on rank 0 after each epoch's state is saved (raising KeyboardInterrupt there
    stops the run resumably). `warm_up` (default: when compiling) runs two throw-away steps before the clock starts
    (summary's `compile_warmup_seconds`). A finished run removes its state.pt unless `keep_state`. `dataset`: an
    already loaded CifarData to train on instead of reading `cfg.data_dir` (bench/sweep.py reads the files once).
    """
    from fastcifar.train.epoch_progress import EpochProgress, progress_mode

    try:
        s = setup(cfg, dist_info_from_env(), resume_dir=resume_dir, dataset=dataset, warm_up=warm_up,
                  announce=bool(progress))
    except WriteFailed as exc:  # a new run left nothing behind, a resumed one is as it was
        fix = "free space" if isinstance(exc, DiskFull) else "fix that"
        raise type(exc)(f"{exc}: {fix}, then run the same command again") from None
    try:
        with s.stop, EpochProgress(s.cfg, s.data, s.start_epoch,
                                   progress_mode(progress) if s.dist.is_main else "off") as bar:
            bar.header(s.device, s.data, s.run.path, s.start_epoch, s.levers)
            if s.records is not None and s.records.header():
                print(s.records.header(), file=sys.stderr, flush=True)
            for epoch in range(s.start_epoch, s.cfg.epochs):
                bar.start_epoch(epoch)
                cpu = time.process_time()
                metrics = {"epoch": epoch + 1, **train_one_epoch(s, epoch, bar.advance)}
                start, cpu_eval = time.perf_counter(), time.process_time()
                metrics.update(evaluate(s, last=epoch + 1 == s.cfg.epochs))
                # What compare's time budget priced, by wall and by this process's CPU time (study/sizing.py reads
                # them back; the CPU time is what another process on the machine leaves alone).
                metrics.update(train_cpu_seconds=cpu_eval - cpu, eval_seconds=time.perf_counter() - start,
                               eval_cpu_seconds=time.process_time() - cpu_eval)
                record(s, metrics, bar.log_epoch, on_epoch_end)
        return finish(s, keep_state)
    except KeyboardInterrupt:
        raise FastCifarError(stopped_message("interrupted", s.run.has_state(), s.run.path), exit_code=130) from None
    except Preempted as stop:
        raise FastCifarError(stopped_message(f"stopped by {s.stop.requested} after {stop}", s.run.has_state(),
                                             s.run.path), exit_code=PREEMPTED_EXIT) from None
    except WriteFailed as exc:  # the write that failed changed nothing: the last saved epoch is whole
        fix = "free space" if isinstance(exc, DiskFull) else "fix that"
        raise type(exc)(f"{exc}; the run keeps its last saved epoch: {fix}, then continue it with: fastcifar "
                        f"train --resume {s.run.path}") from None
    finally:
        close(s)


def setup(cfg: TrainConfig, dist: DistInfo, *, resume_dir: Path | None, dataset, warm_up: bool | None,
          announce: bool) -> Session:
    """Everything a run needs before its first epoch; a failure here leaves no run directory it created."""
    import torch

    from fastcifar.train import build, checkpoint, step
    from fastcifar.train.distributed import destroy_distributed, init_distributed, wrap_distributed

    device = resolve_device(cfg.device, dist.local_rank)  # first: a bad --device, --init or --out costs no data load
    cfg = cfg.resolved(device.type)
    if cfg.linear_probe:
        if dist.enabled:
            raise FastCifarError("--linear-probe trains one linear layer on cached features: run it without torchrun")
        # a linear layer on cached features: nothing for compile to fuse, and 2-D features have no channels_last
        cfg = replace(cfg, compile=False, channels_last=False)
    if device.type == "cuda":
        # Every training batch has the same shape, so cuDNN's per-shape autotuning pays once (~6 % measured).
        torch.backends.cudnn.benchmark = True
    init_distributed(dist, device)
    run = None
    try:
        # What the user typed is checked before the data loads (minutes for a download or an image folder): the
        # --init weights (read once, fitted to the arch), then the directory (removed again if anything after it
        # fails); then the dataset, the model (its classes are the dataset's) and the loaders.
        weights = build.read_init(cfg)
        run = build.open_run_dir(cfg, resume_dir, dist)
        dataset = dataset if dataset is not None else build.load_data(cfg, dist)
        cfg, fitted = build.fit_to_data(cfg, len(dataset.train), dist.world_size)
        if fitted and dist.is_main and announce:
            print(f"small data: {fitted}", file=sys.stderr, flush=True)
        model, spec = build.build_model(cfg, device, dataset.class_names, weights)
        data = build.build_data(cfg, spec, dist, device, dataset)
        if dist.is_main and resume_dir is None:
            run.write_config(cfg.to_dict())
            write_env(run, device)
        elif dist.is_main and not run.has_env():  # killed between config.json and env.json
            write_env(run, device)
        levers = build.apply_levers(model, spec, cfg, data.train_images)  # freezes before the optimizer
        probe = None
        if cfg.linear_probe:  # freezes all but the classifier, before the optimizer; loaders over cached features
            from fastcifar.train.linear_probe import attach

            probe, data = attach(model, data, cfg, device, step.autocast_factory(cfg.precision, device))
            levers.append("linear probe: frozen backbone in eval mode, cached features, classifier trained")
        optimizer, scheduler = step.build_optimizer(model, cfg, len(data.train), device)
        ema = step.build_ema(model, cfg, len(data.train))
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        start_epoch, history, train_seconds = 0, [], 0.0
        # A resumed run without state.pt (killed before its first one, or --save-state-every 0) starts again from
        # epoch 1 with its config.json: what the same command would have done, so nothing is a dead end.
        restored = resume_dir is not None and run.has_state()
        if resume_dir is not None and not restored and dist.is_main:
            print(f"{run.path} has no state.pt (stopped before its first saved epoch, or --save-state-every 0): "
                  f"training it again from epoch 1 with its {CONFIG_FILE}", file=sys.stderr, flush=True)
        if restored:
            state = run.load_state(device)
            start_epoch, train_seconds = checkpoint.restore(state, model, optimizer, scheduler, ema, scaler)
            fitted = fitted or state.get("small_data")
            history = run.metrics_until(start_epoch)
        if dist.is_main and resume_dir is not None and (restored or (run.path / METRICS_FILE).exists()):
            run.rewrite_metrics(history)  # epochs after the last saved state are trained again: drop their lines
        if dist.is_main and not restored and cfg.save_state_every:  # from the first moment: Ctrl-C in epoch 1 resumes
            run.save_state(checkpoint.training_state(0, 0.0, model, optimizer, scheduler, ema, scaler, fitted))
        records = None
        if dist.is_main:
            from fastcifar.train.records import RunRecords

            from fastcifar.train.summary import dataset_extra

            records = RunRecords(cfg, run, spec, dataset_extra(data, run.path, cfg), start_epoch)
        compiled = step.CompileRecord(model, cfg.compile_mode) if cfg.compile else None
        autocast = step.autocast_factory(cfg.precision, device)
        net = probe.classifier if probe is not None else wrap_distributed(model, dist, device)
        run_step = step.make_step(net, optimizer, scheduler, scaler, autocast,
                                  torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
                                  # the scheduler's step count is a host int: the EMA never reads the device
                                  ema_update=None if ema is None else lambda: ema.update(scheduler.last_epoch))
        s = Session(cfg, dist, device, run, spec, data, model, run_step, optimizer, scheduler, ema, scaler, autocast,
                    torch.channels_last if cfg.channels_last else torch.contiguous_format, levers, records, compiled,
                    fitted, start_epoch, history, train_seconds, probe=probe)
        if cfg.compile if warm_up is None else warm_up:
            s.warmup_seconds = step.warm_up(run_step, model, (optimizer, scheduler), ema, scaler,
                                            batch_size=data.train_options.batch_size, image_size=cfg.image_size,
                                            num_classes=s.num_classes, memory_format=s.memory_format, device=device)
            if dist.is_main:
                print(f"compile warm-up: {s.warmup_seconds:.1f} s (kept out of the training time)", file=sys.stderr,
                      flush=True)
        return s
    except BaseException:
        if run is not None and resume_dir is None:  # failed before its first epoch: leave nothing behind
            run.discard()
        elif run is not None:
            run.release()
        destroy_distributed(dist)
        raise


def train_one_epoch(s: Session, epoch: int, advance: Callable[[int], None]) -> dict:
    """One pass over the training loader; losses and accuracy stay on the device until the epoch ends (the
    non-finite guard reads them back every NONFINITE_CHECK_EVERY steps). A SIGTERM stops it at the next step
    boundary alone, or at the next guard read under torchrun, where the ranks agree on it."""
    import torch

    loader = s.data.train
    loader.set_epoch(epoch)
    s.model.train()
    zero = {"device": s.device, "dtype": torch.float64}
    loss_sum, late_sum = torch.zeros((), **zero), torch.zeros((), **zero)  # late: the epoch's second half
    correct = torch.zeros((), device=s.device, dtype=torch.int64)
    first_bad = torch.full((), -1, device=s.device, dtype=torch.int64)
    seen = late_seen = 0
    half = len(loader) // 2
    start = time.perf_counter()
    for i, (images, labels) in enumerate(loader):
        loss, right = s.step(images.contiguous(memory_format=s.memory_format), labels)
        bad = ~torch.isfinite(loss) & (first_bad < 0)
        first_bad = torch.where(bad, torch.full_like(first_bad, epoch * len(loader) + i + 1), first_bad)
        loss_sum += loss.double() * len(labels)
        if i >= half:
            late_sum += loss.double() * len(labels)
            late_seen += len(labels)
        correct += right
        seen += len(labels)
        stop_now = s.stop.requested is not None and not s.dist.enabled  # alone: at once
        if (i + 1) % NONFINITE_CHECK_EVERY == 0 or i + 1 == len(loader):
            stop = torch.full((), float(s.stop.requested is not None), **zero)
            flags = _all_reduce(s.dist, torch.stack([first_bad.double(), stop]), op="max").tolist()
            if flags[0] >= 0:
                raise NonFiniteLoss(nonfinite_message(int(flags[0]), s.run.has_state(), s.run.path))
            stop_now = bool(flags[1])  # under torchrun: when any rank got the signal
        if stop_now:
            s.stop.requested = s.stop.requested or "SIGTERM"  # another rank's
            raise Preempted(f"step {i + 1}/{len(loader)} of epoch {epoch + 1}")
        advance(len(labels) * s.dist.world_size)
    if s.device.type == "cuda":
        torch.cuda.synchronize(s.device)
    seconds = time.perf_counter() - start
    counts = torch.tensor([float(seen), float(late_seen)], **zero)
    totals = _all_reduce(s.dist, torch.cat([torch.stack([loss_sum, late_sum, correct.double()]), counts]))
    n, n_late = max(float(totals[3]), 1.0), max(float(totals[4]), 1.0)
    n_early = float(totals[3]) - float(totals[4])  # 0 for a one-step epoch: it has no first half
    return {"train_loss": float(totals[0]) / n, "train_loss_second_half": float(totals[1]) / n_late,
            "train_loss_first_half": (float(totals[0]) - float(totals[1])) / n_early if n_early else None,
            "train_acc": float(totals[2]) / n, "train_seconds": seconds, "images_per_second": n / max(seconds, 1e-9)}


def evaluate(s: Session, last: bool = False) -> dict:
    """Validation and test loss/accuracy (with the run's TTA) on rank 0; the last epoch keeps its predictions for
    the summary (s.final_eval)."""
    if not s.dist.is_main:
        return {}
    from fastcifar.train.tta import evaluate as evaluate_loader

    out, results = {}, {}
    for name, loader in (("val", s.data.val), ("test", s.data.test)):
        if loader is None:
            out.update({f"{name}_loss": None, f"{name}_acc": None})
            continue
        if s.probe is not None:  # cached features hold the flip TTA's views already (linear_probe.ProbeHead)
            results[name] = evaluate_loader(s.probe.head, loader, autocast=s.autocast, keep_predictions=last)
        else:
            results[name] = evaluate_loader(s.eval_model(), loader, tta=s.cfg.tta, translate=s.cfg.tta_translate,
                                            autocast=s.autocast, keep_predictions=last)
        out.update(results[name].as_dict(name))
    if last:
        s.final_eval = (out, results)
    return out


def record(s: Session, metrics: dict, log_epoch: Callable[[dict], None], on_epoch_end: EpochHook | None) -> None:
    """The epoch on every rank's clock, and on rank 0 its records, state.pt, log line, warnings (guards.py), hook."""
    from fastcifar.train.checkpoint import training_state

    s.train_seconds += metrics["train_seconds"]
    metrics.update(elapsed_train_seconds=s.train_seconds, lr=s.scheduler.get_last_lr()[0])
    s.history.append(metrics)
    if not s.dist.is_main:
        return
    s.records.epoch(metrics, s.history, s.eval_model())
    every, epoch = s.cfg.save_state_every, metrics["epoch"]
    if every and (epoch % every == 0 or epoch == s.cfg.epochs):
        start = time.perf_counter()
        s.run.save_state(training_state(epoch, s.train_seconds, s.model, s.optimizer, s.scheduler, s.ema, s.scaler,
                                        s.fitted))
        s.records.state_saved(epoch)
        s.state_seconds += time.perf_counter() - start
    log_epoch(metrics)
    for warning in epoch_warnings(s.history, run_facts(s)):
        print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    if on_epoch_end is not None:
        on_epoch_end(epoch, metrics)


def finish(s: Session, keep_state: bool) -> TrainResult:
    """The final evaluation, model.safetensors + model.json, summary.json (rank 0) and the DDP consistency record;
    a finished run keeps no state.pt (it is only for resuming, ~90 MB for a ResNet-18) unless `keep_state`."""
    from fastcifar.train.summary import run_summary

    if s.dist.is_main and s.final_eval is None:  # resumed after its last epoch: evaluate now
        evaluate(s, last=True)
    summary = run_summary(s)
    if s.dist.is_main and not keep_state:
        s.run.drop_state()
    return TrainResult(run_dir=s.run.path, summary=summary)


def close(s: Session) -> None:
    """What a run holds open, finished or not: TensorBoard's writer, the compile record's log hook, the run
    directory's lock, the process group."""
    from fastcifar.train.distributed import destroy_distributed

    if s.records is not None:
        s.records.close()
    if s.compile_record is not None:
        s.compile_record.finish()
    s.run.release()
    destroy_distributed(s.dist)


def _all_reduce(dist: DistInfo, tensor, op: str = "sum"):
    if not dist.enabled:
        return tensor
    import torch.distributed as td

    tensor = tensor.clone()
    td.all_reduce(tensor, op={"sum": td.ReduceOp.SUM, "max": td.ReduceOp.MAX}[op])
    return tensor


def write_env(run: RunDir, device) -> None:
    """env.json (versions, machine, git sha and whether fastcifar's checkout was dirty, the device) and the diff."""
    import torch

    from fastcifar.runtime import cpu_name, git_diff

    diff = git_diff()  # read once: git.diff and env.json's hash of it describe the same tree
    env = env_info(diff=diff)
    env["device"] = str(device)
    env["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    run.write_env(env, diff)


def resume(run_dir: Path | str, *, progress: bool | str = True, on_epoch_end: EpochHook | None = None,
           keep_state: bool = False) -> TrainResult:
    """Continue an interrupted run from its last saved epoch (optimizer, scheduler, RNG, EMA, scaler); a run with a
    config.json but no state.pt yet starts again from epoch 1 with that config."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        if run_dir.is_dir() and holds_nothing(run_dir):
            raise FastCifarError(f"cannot resume {run_dir}: it was stopped before its {CONFIG_FILE} was written, so "
                                 f"nothing was trained; start it again with the same command (--out {run_dir})")
        raise FastCifarError(f"cannot resume {run_dir}: it has no {CONFIG_FILE} (is it a fastcifar run directory?)")
    cfg = TrainConfig.load(run_dir / CONFIG_FILE)
    if is_finished(run_dir):
        raise FastCifarError(f"{run_dir} already finished ({cfg.epochs} epochs); nothing to resume")
    return train(replace(cfg, out=str(run_dir)), progress=progress, resume_dir=run_dir, on_epoch_end=on_epoch_end,
                 keep_state=keep_state)
