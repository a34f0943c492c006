"""What stops or warns a training run: a non-finite loss (the run stops, its last saved state stays), the divergence
warning (a first epoch or warm-up that ends above the loss of guessing; the run goes on) and SIGTERM (a scheduler's
preemption: the run stops at the next step boundary, resumable, exit code 143).

Owns `NonFiniteLoss`, `nonfinite_message`, `divergence_warning` (its thresholds are measured: bench/README.md, "Small
data" and "Time to accuracy and the presets"), `StopSignal`, `Preempted` and `stopped_message`.
"""

from __future__ import annotations

import math
import signal
import threading

from fastcifar.config import TrainConfig
from fastcifar.errors import FastCifarError

NONFINITE_CHECK_EVERY = 25  # steps between host syncs of the non-finite guard (each sync stalls the GPU)
# The divergence guard warns when the loss is this far above ln(classes) (2.30 for 10): healthy starts measured
# 2.19-2.46, blown-up runs 2.58-3.8 (GPU presets with 48 steps per epoch, small CPU runs with 7-21).
DIVERGENCE_MARGIN = 0.2
# The plain recipe measured on an H100 (bench/README.md): the divergence advice scales it to the run's batch.
MEASURED_LR, MEASURED_BATCH = 0.2, 512


class NonFiniteLoss(FastCifarError):
    pass


PREEMPTED_EXIT = 128 + signal.SIGTERM  # 143, what a shell reports for a job ended by SIGTERM: schedulers requeue on it


class Preempted(Exception):
    """SIGTERM asked the run to stop; raised at a step boundary (every rank at the same one under torchrun)."""


class StopSignal:
    """SIGTERM, what Slurm, Kubernetes and spot instances send before they kill a job, as a request to stop at the next
    step boundary (the default action would kill the process mid-step). Installed only in the main thread and only
    over the default action: a host that handles SIGTERM itself (a Ray worker) keeps its handler."""

    def __init__(self):
        self.requested: str | None = None  # the signal's name once it came
        self._previous = None

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def stopped_message(what: str, state_kept: bool, where) -> str:
    """The one message of a run stopped on request (Ctrl-C, SIGTERM): `what` happened ("interrupted", "stopped by
    SIGTERM after step 12/45 of epoch 2"), and how to continue from the last saved epoch."""
    if not state_kept:
        return f"{what}; {where} has no state to resume from (--save-state-every 0)"
    return f"{what}; the state of the last saved epoch is in {where}. Continue with: fastcifar train --resume {where}"


def nonfinite_message(step: int, state_kept: bool, where) -> str:
    kept = f"the state of the last saved epoch is in {where}" if state_kept else \
        "no state.pt was kept (--save-state-every 0)"
    return (f"the training loss became NaN/inf at step {step}; the run stopped. Lower --lr or use --precision "
            f"fp32/bf16 ({kept}).")


def divergence_warning(metrics: dict, cfg: TrainConfig, steps_per_epoch: int, num_classes: int) -> str | None:
    """A warning when the epoch that ends the first epoch or the warm-up still trains clearly above ln(num_classes) -
    worse than guessing, the mark of a run that blew up - else None. Never stops the run.

    Judged on the mean loss of the epoch's second half (`train_loss_second_half`; the whole epoch's mean when it is
    not recorded), against ln(classes) + DIVERGENCE_MARGIN, for every run however short. The advice always changes
    something that is measured to help: the lr down to the measured recipe scaled to this batch (with its 20 %
    warm-up), else a longer warm-up, else half the batch and lr.
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
