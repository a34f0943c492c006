"""Fitting a compare to a time budget on the machine it runs on (`--time-budget`).

Owns `probe_rate` (training images per second of the study's model here, from a few steps on random data),
`estimate_seconds` (training, per-epoch evaluation and robustness evaluation of the planned runs at that rate) and
`fit` (the largest training pool, at least MIN_POOL images, whose estimate fits). compare.py keeps the decision in
the report directory (sizing.json). Why and how: docs/compare.md, "The time budget".
"""

from __future__ import annotations

import time
from typing import Callable

MIN_POOL = 1000  # below this the smallest fraction trains on a handful of images: a study in name only
PROBE_STEPS, PROBE_WARMUP = 3, 2
# Relative costs per image, from the smoke preset on the development CPU (bench/README.md, "Evaluation cost" and the
# train/infer figures there): a forward pass ~1/3 of a training step; EfficientNet-Lite0's ~1/6 (its depthwise
# convolutions' backward dominates a step: bench/README.md, "EfficientNet-Lite0 on the CPU").
FORWARD_COST = 1 / 3
FORWARD_COSTS = {"efficientnet_lite0": 1 / 6}
# The share of the budget the estimate may fill: start-up, data loading, the report and a machine slower than during
# the probe take the rest. `make run` on EfficientNet-Lite0, 2-core EPYC, 2026-12-07: estimated at 13.0 min (0.87 of
# 15), it took 14.8 - 1.14x its estimate (docs/compare.md, "The time budget").
BUDGET_SHARE = 0.85


def probe_rate(base, settings, device) -> tuple[dict, str]:
    """({(size, stem): training images per second} of base's model at each setting, fp32 eager, on random batches
    (PROBE_WARMUP untimed steps, then PROBE_STEPS timed ones): a lower bound where training would compile; the
    device, named)."""
    import torch

    from fastcifar.models import create_model
    from fastcifar.runtime import cpu_name, resolve_device

    device = resolve_device(device)
    label = f"{device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu_name()})"
    rates = {}
    for size, stem in settings:
        torch.manual_seed(0)
        model, _ = create_model(base.arch, "random", stem, image_size=size)
        memory_format = torch.channels_last if base.resolved(device.type).channels_last else torch.contiguous_format
        model.to(device, memory_format=memory_format).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        batch = min(base.batch_size, 128)
        x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
        y = torch.randint(0, 10, (batch,), device=device)
        loss_fn = torch.nn.CrossEntropyLoss()
        for i in range(PROBE_WARMUP + PROBE_STEPS):
            if i == PROBE_WARMUP:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates[(size, stem)] = PROBE_STEPS * batch / max(time.perf_counter() - start, 1e-9)
        del model, opt
    return rates, label


def estimate_seconds(trained, final, rates: dict, n_test: int, severities: tuple[int, ...], tta: bool,
                     n_corruptions: int = 9) -> float:
    """Seconds at `rates` for the `trained` runs (plan.PlannedRun: their training epochs and the validation and
    test evaluation after each, two views with flip TTA) and the `final` models' robustness evaluation (the clean
    test pass plus every corruption at every severity)."""
    seconds = 0.0
    for run in trained:
        rate = rates[run.setting]
        n_val = run.cfg.train_limit - run.n_train
        seconds += run.n_train * run.cfg.epochs / rate
        seconds += (n_val + n_test) * (2 if tta else 1) * run.cfg.epochs * _forward_cost(run) / rate
    if severities:
        seconds += sum(n_test * (1 + n_corruptions * len(severities)) * _forward_cost(run) / rates[run.setting]
                       for run in final)
    return seconds


def _forward_cost(run) -> float:
    return FORWARD_COSTS.get(run.cfg.arch, FORWARD_COST)


def fit(pool: int, budget_s: float, estimate: Callable[[int], float], step: int = 500) -> tuple[int, float]:
    """(the largest pool <= `pool`, in steps of `step` images and at least MIN_POOL, whose `estimate(pool)` fits
    BUDGET_SHARE of `budget_s` - or MIN_POOL when none does - and its estimate)."""
    for candidate in [pool, *range((pool - 1) // step * step, MIN_POOL, -step)]:  # the estimate grows with the pool
        seconds = estimate(candidate)
        if seconds <= BUDGET_SHARE * budget_s:
            return candidate, seconds
    return min(pool, MIN_POOL), estimate(min(pool, MIN_POOL))


def describe(sizing: dict) -> str:
    """One line for the log and the report."""
    minutes = sizing["budget_s"] / 60
    full = (f"the study as asked ({sizing['requested_pool']:,} training images) is estimated at "
            f"~{sizing['requested_estimate_s'] / 60:.0f} min")
    head = (f"measured {sizing['images_per_s']:,.0f} training img/s on {sizing['device']}: {full}")
    if sizing["pool"] == sizing["requested_pool"]:
        return f"{head}, within the {minutes:g}-min budget (--time-budget)"
    over = "" if sizing["estimate_s"] <= sizing["budget_s"] else " (still over the budget: the smallest pool)"
    return (f"{head}, over the {minutes:g}-min budget (--time-budget): sized to {sizing['pool']:,} training images "
            f"(~{sizing['estimate_s'] / 60:.0f} min){over}. For the full size: --time-budget 0 (make run BUDGET=0)")
