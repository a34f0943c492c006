"""Fitting a compare to a time budget on the machine it runs on (`--time-budget`).

Owns `probe` (what one training image, one per-epoch evaluation image and one robustness image of the study's model
cost here, measured on a few random batches), `estimate_parts` (training, per-epoch evaluation and robustness
evaluation of the planned runs at those costs), `fit` (the largest training pool, at least MIN_POOL images, whose
estimate fits) and `actual_parts` (what the same parts took, from the finished runs' records). compare.py keeps the
decision, and at the end what the study took, in the report directory (sizing.json). Why and how: docs/compare.md,
"The time budget".
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

MIN_POOL = 1000  # below this the smallest fraction trains on a handful of images: a study in name only
PROBE_STEPS, PROBE_WARMUP = 3, 2
EVAL_PROBE_BATCHES = 1  # timed no-grad batches (after one untimed) of the per-epoch and the robustness evaluation
# The share of the budget the estimate may fill: start-up, data loading, model set-up, state saves, the report and a
# machine slower than during the probe take the rest. Set when evaluation was priced at a fixed fraction of a
# training step (`make run` on EfficientNet-Lite0, 2-core EPYC, 2026-12-07: estimated at 13.0 min, 0.87 of 15, it
# took 14.8); sizing.json's `actual` now records what each part took against its estimate (docs/compare.md).
BUDGET_SHARE = 0.85
PARTS = ("training_s", "evaluation_s", "robustness_s")


# The clocks every cost and part is measured by: wall time is what the budget is about; the process's CPU time is
# what another process on the machine leaves alone (with one torch thread, as tests/test_compare.py runs it), so the
# estimate's pricing can be checked on a busy machine too.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclass(frozen=True)
class Costs:
    """Seconds per image of one setting on this machine, by one clock."""

    train: float  # a training image: SGD steps at batch min(batch, 128), fp32 eager
    eval: float  # a per-epoch evaluation image: no grad, its batch, precision, layout and TTA views
    robustness: float  # a robustness image's forward: uint8 pixels through the fp32 pipeline
    corrupt: float  # generating one corrupted image, mean over the corruptions

    def to_dict(self) -> dict:
        return asdict(self)


def probe(base, settings, device, severity: int = 3) -> tuple[dict, str]:
    """({(size, stem): {clock: Costs}} of base's model at each setting, on random data, by each of CLOCKS; the
    device, named).

    Training: PROBE_WARMUP untimed SGD steps, then PROBE_STEPS timed ones, fp32 eager (a lower bound where training
    would compile). Per-epoch evaluation: tta_logits under no_grad in the evaluation loader's batch (max(batch,
    256)), with the run's precision, memory layout and TTA views. Robustness: one_run.ensure_robustness's fp32 pixel
    pipeline in its batches of 256, and every corruption at `severity` once. What a no-grad image costs against a
    training image depends on the network, its TTA views and the machine, so it is measured here rather than
    taken as a fixed fraction of a training step."""
    import torch

    from fastcifar.models import create_model
    from fastcifar.preprocess import make_pixel_pipeline
    from fastcifar.robustness.corruptions import CORRUPTIONS, corrupt
    from fastcifar.runtime import cpu_name, resolve_device
    from fastcifar.train.step import autocast_factory
    from fastcifar.train.tta import tta_logits

    device = resolve_device(device)
    label = f"{device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu_name()})"
    run = base.resolved(device.type)
    memory_format = torch.channels_last if run.channels_last else torch.contiguous_format
    autocast = autocast_factory(run.precision, device)

    def timed(step: Callable[[], object], warmup: int, repeats: int, images: int) -> dict:
        """{clock: seconds per image} of `step` (`images` per call) after `warmup` untimed calls."""
        for _ in range(warmup):
            step()
        _sync(device)
        start = {name: clock() for name, clock in CLOCKS.items()}
        for _ in range(repeats):
            step()
        _sync(device)
        return {name: max(clock() - start[name], 1e-9) / (repeats * images) for name, clock in CLOCKS.items()}

    costs = {}
    for size, stem in settings:
        torch.manual_seed(0)
        model, spec = create_model(base.arch, "random", stem, image_size=size)
        model.to(device, memory_format=memory_format).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        batch = min(base.batch_size, 128)
        x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
        y = torch.randint(0, 10, (batch,), device=device)
        loss_fn = torch.nn.CrossEntropyLoss()

        def train_step():
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()

        train = timed(train_step, PROBE_WARMUP, PROBE_STEPS, batch)
        del opt
        model.eval()
        eval_batch = max(base.batch_size, 256)  # train/build.py's evaluation loader
        xe = torch.randn(eval_batch, 3, size, size, device=device).contiguous(memory_format=memory_format)

        def eval_step():
            with torch.no_grad(), autocast():
                return tta_logits(model, xe, flip=bool(run.tta), translate=bool(run.tta_translate)).float()

        evaluation = timed(eval_step, 1, EVAL_PROBE_BATCHES, eval_batch)
        pipeline = make_pixel_pipeline(model, spec.mean, spec.std, size).to(device)
        pixels = torch.randint(0, 256, (256, 32, 32, 3), dtype=torch.uint8, device=device)

        def robustness_step():
            with torch.inference_mode():
                return pipeline(pixels)

        robustness = timed(robustness_step, 1, EVAL_PROBE_BATCHES, len(pixels))
        corrupting = timed(lambda: [corrupt(pixels, name, severity) for name in CORRUPTIONS], 0, 1,
                           len(CORRUPTIONS) * len(pixels))
        costs[(size, stem)] = {clock: Costs(train=train[clock], eval=evaluation[clock],
                                            robustness=robustness[clock], corrupt=corrupting[clock])
                               for clock in CLOCKS}
        del model, pipeline
    return costs, label


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def estimate_parts(trained, final, costs: dict, n_test: int, severities: tuple[int, ...],
                   n_corruptions: int = 9) -> dict:
    """{training_s, evaluation_s, robustness_s} at `costs` ({setting: Costs}, one clock's) for the `trained` runs
    (run_plan.PlannedRun: their training epochs, and the validation and test evaluation after each) and the `final`
    models' robustness evaluation (the clean test pass plus every corruption at every severity)."""
    parts = dict.fromkeys(PARTS, 0.0)
    for run in trained:
        cost = costs[run.setting]
        n_val = run.cfg.train_limit - run.n_train
        if run.cfg.linear_probe:  # one no-grad backbone pass per image (train/linear_probe.py); its epochs are free
            parts["training_s"] += run.n_train * cost.eval
            parts["evaluation_s"] += (n_val + n_test) * cost.eval
            continue
        parts["training_s"] += run.n_train * run.cfg.epochs * cost.train
        parts["evaluation_s"] += (n_val + n_test) * run.cfg.epochs * cost.eval
    if severities:
        for run in final:
            # the axes' runs beyond the clean study are evaluated on the clean test images only (compare.py)
            corrupted = n_test * n_corruptions * len(severities) if run.core else 0
            cost = costs[run.setting]
            parts["robustness_s"] += (n_test + corrupted) * cost.robustness + corrupted * cost.corrupt
    return parts


# Where the runs' records keep each part's time, by clock: metrics.jsonl's per-epoch keys (train/loop.py), then
# robustness.json's (study/one_run.py).
RECORD_KEYS = {"wall": ("train_seconds", "eval_seconds", "seconds"),
               "cpu": ("train_cpu_seconds", "eval_cpu_seconds", "cpu_seconds")}


def actual_parts(trained, final, severities: tuple[int, ...], clock: str = "wall") -> dict:
    """What the parts `estimate_parts` prices took by `clock`, from the runs' records (each epoch's training and
    evaluation seconds in metrics.jsonl, robustness.json's seconds) plus their `total_s`: the work of every
    invocation of a resumed study, which its estimate also covers (the unfinished epoch an interruption threw away
    is in neither). A part whose records lack a time (a run trained by a version that did not record it) is None,
    and so is the total then."""
    from fastcifar.rundir import RunDir, read_metrics

    train_key, eval_key, robustness_key = RECORD_KEYS[clock]
    parts: dict = dict.fromkeys(PARTS, 0.0)

    def add(part: str, values: list) -> None:
        parts[part] = None if parts[part] is None or None in values else parts[part] + sum(values)

    for run in trained:
        epochs = read_metrics(run.run_dir)
        add("training_s", [e.get(train_key) for e in epochs] or [None])
        add("evaluation_s", [e.get(eval_key) for e in epochs] or [None])
    for run in final if severities else ():
        add("robustness_s", [(RunDir(run.run_dir).read_robustness() or {}).get(robustness_key)])
    parts["total_s"] = None if None in parts.values() else sum(parts.values())
    return parts


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
    dropped = sizing.get("dropped") or []
    if dropped:
        head += (f", over the {minutes:g}-min budget (--time-budget): dropped {', '.join(dropped)} (the axes a budget "
                 "drops first)")
    if sizing["pool"] == sizing["requested_pool"]:
        line = f"{head}, {'then ' if dropped else ''}within the {minutes:g}-min budget (--time-budget)"
        if dropped:
            line += (f" at ~{sizing['estimate_s'] / 60:.0f} min. For the full study: --time-budget 0 (make run "
                     "BUDGET=0)")
    else:
        over = "" if sizing["estimate_s"] <= sizing["budget_s"] else " (still over the budget: the smallest pool)"
        line = (f"{head}, over the {minutes:g}-min budget (--time-budget): sized to {sizing['pool']:,} training "
                f"images (~{sizing['estimate_s'] / 60:.0f} min){over}. For the full size: --time-budget 0 (make run "
                "BUDGET=0)")
    actual = (sizing.get("actual") or {}).get("total_s")
    if actual is not None:
        line += (f"; its training, evaluation and robustness took {actual / 60:.1f} min against the estimate's "
                 f"{sizing['estimate_s'] / 60:.1f}")
    return line
