"""What stops or warns a training run: a non-finite loss (the run stops, its last saved state stays), two warnings
that let the run go on - "probably diverged" (the training loss above the loss of guessing and not falling) and
"collapsed" (held-out accuracy at chance after the warm-up) - and SIGTERM (a scheduler's preemption: the run stops
at the next step boundary, resumable, exit code 143).

Owns `NonFiniteLoss`, `nonfinite_message`, `RunFacts`, `epoch_warnings` / `run_warnings` (the log's and
summary.json's; the divergence line is measured: bench/README.md, "Small data" and "Time to accuracy and the
presets"), `StopSignal`, `Preempted` and `stopped_message`.
"""

from __future__ import annotations

import math
import signal
import threading
from dataclasses import dataclass
from functools import lru_cache

from fastcifar.config import TrainConfig
from fastcifar.errors import FastCifarError
from fastcifar.train.step import warmup_steps

NONFINITE_CHECK_EVERY = 25  # steps between host syncs of the non-finite guard (each sync stalls the GPU)
# The divergence line: this far above ln(classes) (2.30 for 10). Healthy first epochs measured 2.19-2.46, blown-up
# ones 2.58-3.8 (GPU presets with 48 steps per epoch, small CPU runs with 7-21) - but a tiny run that went on to
# learn also ended epoch 1 at 2.51 (issue 36), so one epoch-1 reading is never enough on its own.
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
        return (f"{what}; {where} has no state to resume from (--save-state-every 0): fastcifar train --resume "
                f"{where} trains it again from epoch 1")
    return f"{what}; the state of the last saved epoch is in {where}. Continue with: fastcifar train --resume {where}"


def nonfinite_message(step: int, state_kept: bool, where) -> str:
    kept = f"the state of the last saved epoch is in {where}" if state_kept else \
        "no state.pt was kept (--save-state-every 0)"
    return (f"the training loss became NaN/inf at step {step}; the run stopped. Lower --lr or use --precision "
            f"fp32/bf16 ({kept}).")


@dataclass(frozen=True)
class RunFacts:
    """What the warnings judge a run's epochs against: its config, steps per epoch, classes and how many images each
    held-out split has (0: none)."""
    cfg: TrainConfig
    steps_per_epoch: int
    num_classes: int
    n_val: int
    n_test: int


def run_facts(session) -> RunFacts:
    """The facts of a training session (loop.Session; summary.py asks too, so it lives here, below both)."""
    s = session
    return RunFacts(s.cfg, len(s.data.train), s.num_classes, s.data.n_val, s.data.n_test)


def epoch_warnings(history: list[dict], facts: RunFacts) -> list[str]:
    """The warnings the latest epoch of `history` raises (each kind once per run, at the first epoch that shows it):
    the loss above guessing and not falling (`diverged_warning`), or held-out accuracy at chance after the warm-up
    (`collapsed_warning`). They never stop the run."""
    found = []
    for check in (diverged_warning, collapsed_warning):
        warning = check(history, facts)
        if warning and not any(check(history[:i], facts) for i in range(1, len(history))):
            found.append(warning)
    return found


def run_warnings(history: list[dict], facts: RunFacts) -> list[str]:
    """Every warning of the run in the order the log printed them: summary.json's `warnings` (a resumed run's
    earlier epochs included, from its metrics.jsonl)."""
    return [w for i in range(1, len(history) + 1) for w in epoch_warnings(history[:i], facts)]


def diverged_warning(history: list[dict], facts: RunFacts) -> str | None:
    """'probably diverged', on strong evidence only, judged at the latest epoch of `history`: the mean training loss
    of its second half is non-finite, or above ln(classes) + DIVERGENCE_MARGIN and no lower than the lowest of the
    earlier epochs' readings. Epoch 1 of a longer run is never judged alone (a tiny or noisy run starts above the line
    and then learns: issue 36); a one-epoch run, which has no later epoch, is judged on its two halves."""
    if not history:
        return None
    latest, c = history[-1], facts.num_classes
    loss, chance = _late_loss(latest), math.log(c)
    line = chance + DIVERGENCE_MARGIN
    what = f"epoch {latest['epoch']} training loss"
    if not math.isfinite(loss):  # the step guard stops such a run first; a reading that slips past it still tells
        return f"{what} is {loss}: the run has probably diverged. {_advice(facts)}"
    if not loss > line:
        return None
    if len(history) >= 2:
        best = min(history[:-1], key=_late_loss)
        since = f"epoch {best['epoch']}'s {_late_loss(best):.2f}"
        if loss < _late_loss(best):
            return None
    elif facts.cfg.epochs == 1 and (first := _first_half_loss(latest, facts.steps_per_epoch)) is not None:
        since = f"the {first:.2f} of the epoch's first half"
        if loss < first:
            return None
    else:
        return None
    return (f"{what} {loss:.2f} (its second half) is above {line:.2f} (ln({c}) = {chance:.2f}, the loss of guessing "
            f"uniformly over {c} classes, + {DIVERGENCE_MARGIN:g}) and has not fallen below {since}: the run has "
            f"probably diverged. {_advice(facts)}")


def collapsed_warning(history: list[dict], facts: RunFacts) -> str | None:
    """Held-out accuracy no better than guessing - at most the 97.5th percentile of Binomial(n images, 1/classes) -
    judged at the latest epoch of `history`: at the run's final epoch, or at two epochs in a row once the warm-up is
    over (one epoch is not enough evidence while the run goes on: a slow start can still learn). With the training
    loss at guessing too (above ln(classes) - DIVERGENCE_MARGIN) the run has collapsed; with it below, the model
    learns its training batches but not the held-out images, and the warning says that instead.

    Judged epochs: from the first that ends after the warm-up (the final epoch when the warm-up lasts the whole run,
    as in a one-epoch run). The split: validation, else test (`judged_split`: one too small to tell guessing from
    learning is passed over)."""
    if not history:
        return None
    cfg, c = facts.cfg, facts.num_classes
    split, n = judged_split(facts)
    if split is None:
        return None
    top = chance_top(n, c)

    def at_chance(h: dict) -> bool:
        acc = h.get(f"{split}_acc")
        return acc is not None and round(acc * n) <= top

    latest = history[-1]
    first_judged = min(max(1, math.ceil(warmup_steps(cfg, facts.steps_per_epoch) / max(facts.steps_per_epoch, 1))),
                       cfg.epochs)
    judged = [h for h in history if h["epoch"] >= first_judged]
    if not judged or judged[-1] is not latest or not at_chance(latest):
        return None
    streak = judged[-2:] if len(judged) >= 2 and at_chance(judged[-2]) else [latest]
    if latest["epoch"] < cfg.epochs and len(streak) < 2:
        return None
    name = {"val": "validation", "test": "test"}[split]
    readings = " and ".join(f"{100 * h[f'{split}_acc']:.1f} %" for h in streak)
    epochs = " and ".join(str(h["epoch"]) for h in streak)
    measured = (f"{name} accuracy {readings} (epoch{'s' if len(streak) > 1 else ''} {epochs}, after the warm-up) on "
                f"{n:,} images is no better than guessing: uniform guessing over {c} classes scores {100 / c:.3g} % "
                f"on average and up to {100 * top / n:.1f} % on {n:,} images (97.5th percentile of Binomial({n}, "
                f"1/{c}))")
    loss, chance = _late_loss(latest), math.log(c)
    if loss < chance - DIVERGENCE_MARGIN:
        steps = latest["epoch"] * facts.steps_per_epoch
        return (f"{measured}, while its training loss {loss:.2f} is below guessing's {chance:.2f}: it learns its "
                f"training batches but not the held-out images ({steps} steps so far). Train longer before reading "
                "its accuracy, or check that the held-out labels match their images.")
    return (f"{measured}; its training loss {loss:.2f} is not {DIVERGENCE_MARGIN:g} below guessing's {chance:.2f} "
            f"either. The run has collapsed. {_advice(facts, collapsed=True)}")


def judged_split(facts: RunFacts) -> tuple[str | None, int]:
    """The held-out split whose accuracy `collapsed_warning` judges: validation, else test, skipping one so small
    that guessing could score twice its expected accuracy there (40 images of 10 classes: up to 20 %), where a run
    that learns slowly cannot be told from one that collapsed. (None, 0) when neither can tell."""
    for split, n in (("val", facts.n_val), ("test", facts.n_test)):
        if n and chance_top(n, facts.num_classes) < 2 * n / facts.num_classes:
            return split, n
    return None, 0


@lru_cache(maxsize=None)  # run_warnings asks again for every epoch of every prefix of the history
def chance_top(n: int, num_classes: int, q: float = 0.975) -> int:
    """Correct answers that uniform guessing over `num_classes` reaches on `n` images with probability `q`: the
    q-quantile of Binomial(n, 1/num_classes), exact (its pmf summed in log space; no scipy dependency for one
    number). 1,000 images of 10 classes: 119, so 12 % is above chance and 9-11 % is not."""
    p = 1.0 / num_classes
    if p >= 1.0:
        return n
    log_p, log_not = math.log(p), math.log1p(-p)
    log_n = math.lgamma(n + 1)
    cdf = 0.0
    for k in range(n + 1):
        cdf += math.exp(log_n - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_not)
        if cdf >= q - 1e-12:  # rounding in the sum must not push the quantile one step up
            return k
    return n


def _late_loss(metrics: dict) -> float:
    """The epoch's reading: the mean loss of its second half (closer to where the epoch ended than the whole
    epoch's mean, which a fast first half drags up), else the whole epoch's (metrics.jsonl of older runs)."""
    return metrics.get("train_loss_second_half", metrics["train_loss"])


def _first_half_loss(metrics: dict, steps_per_epoch: int) -> float | None:
    if metrics.get("train_loss_first_half") is not None:
        return metrics["train_loss_first_half"]
    half = steps_per_epoch // 2
    if "train_loss_second_half" not in metrics or half < 1:
        return None
    # older metrics.jsonl lines: with equal batches the epoch's mean is the step-weighted mean of its two halves
    late = metrics["train_loss_second_half"] * (steps_per_epoch - half)
    return (metrics["train_loss"] * steps_per_epoch - late) / half


def _advice(facts: RunFacts, collapsed: bool = False) -> str:
    """The likely cause and a change that differs from what is in use and is measured to help: the lr down to the
    measured recipe scaled to this batch (with its 20 % warm-up), else a longer warm-up, else half the batch and lr.
    A collapsed run whose lr is not above the recipe is told what else to look at instead."""
    cfg, steps = facts.cfg, facts.steps_per_epoch
    warm = warmup_steps(cfg, steps)
    recipe_lr = MEASURED_LR * cfg.batch_size / MEASURED_BATCH  # the measured recipe, scaled linearly to this batch
    total = cfg.epochs * steps
    if cfg.lr > recipe_lr * 1.01:
        longer = f" --warmup-epochs {0.2 * cfg.epochs:g}" if cfg.warmup_epochs < 0.2 * cfg.epochs else ""
        fix = (f"--lr {recipe_lr:.3g}{longer} (the measured plain recipe: lr {MEASURED_LR:g} at batch "
               f"{MEASURED_BATCH}, scaled to batch {cfg.batch_size}, warm-up 20 % of the steps)")
    elif collapsed:
        return (f"Its peak learning rate {cfg.lr:g} is not above the measured recipe's {recipe_lr:.3g} for batch "
                f"{cfg.batch_size}: check that the labels match the images, or train for more than its {total} "
                "steps.")
    elif warm < total // 2:
        fix = (f"--warmup-epochs {min(cfg.epochs / 2, max(2 * warm, 1) / steps):.3g} (a warm-up of "
               f"{min(total // 2, max(2 * warm, 1))} steps instead of {warm})")
    else:
        fix = f"--lr {cfg.lr / 2:.3g} --batch-size {max(cfg.batch_size // 2, 1)} (twice the steps, each half as large)"
    return (f"Likely cause: peak learning rate {cfg.lr:g} is too high for batch {cfg.batch_size} with a {warm}-step "
            f"warm-up ({steps} steps per epoch). Fix: {fix}.")
