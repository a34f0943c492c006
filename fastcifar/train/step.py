"""How a training run steps: parameter groups, the learning-rate schedule, the optimizer, the weight average,
precision (autocast), the one step function, and the compile warm-up that keeps compile time off the clock.
"""

from __future__ import annotations

import contextlib
import math
import time
from functools import partial

from fastcifar.config import TrainConfig
from fastcifar.models import CLASSIFIERS


def param_groups(model, weight_decay: float, backbone_lr_scale: float = 1.0,
                 lr: float | None = None, bn_bias_lr_scale: float = 1.0) -> list[dict]:
    """No weight decay on BatchNorm weights and on biases (1-d tensors): decaying them only hurts.

    With `backbone_lr_scale` != 1 every tensor but the classifier (a ResNet's `fc.*`, EfficientNet's
    `classifier.*`) gets `lr * backbone_lr_scale`, so a pretrained backbone moves slower than the new head (two more
    groups). With `bn_bias_lr_scale` != 1 the
    BatchNorm biases get their own group at `lr * bn_bias_lr_scale` (airbench94's `bias_scaler`, 64 there, paired
    with frozen BatchNorm scales). Frozen tensors (requires_grad False) are left out. The groups depend only on the
    config, so a resumed run's saved optimizer state fits them.
    """
    from fastcifar.train.levers import batchnorm_bias_ids

    split_head = backbone_lr_scale != 1.0
    bn_biases = batchnorm_bias_ids(model) if bn_bias_lr_scale != 1.0 else set()
    groups: dict[tuple[bool, bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            head = split_head and name.split(".", 1)[0] in CLASSIFIERS
            groups.setdefault((head, p.ndim > 1, id(p) in bn_biases), []).append(p)
    keys = [(False, True, False), (False, False, False)]
    keys += [(True, True, False), (True, False, False)] if split_head else []
    keys += [(False, False, True)] if bn_biases else []
    out = []
    for head, decay, bn_bias in keys:
        group = {"params": groups.get((head, decay, bn_bias), []), "weight_decay": weight_decay if decay else 0.0}
        if lr is not None:
            group["lr"] = (lr if head or not split_head else lr * backbone_lr_scale) * \
                (bn_bias_lr_scale if bn_bias else 1.0)
        out.append(group)
    return out


def lr_lambda(step: int, *, warmup: int, total: int, schedule: str, floor: float = 0.0) -> float:
    """Linear warm-up to 1 over `warmup` steps, then linear or cosine decay to `floor` (a fraction of the peak;
    airbench94 ends at 0.07 of its peak rather than 0, so the last steps still move) at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    decays = {"linear": lambda p: 1.0 - p, "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p))}
    return floor + (1.0 - floor) * decays[schedule](progress)


def warmup_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The warm-up in optimizer steps (`warmup_epochs` of them). A floor in steps was measured and left out: on small
    data it cost 1.6-6 points (bench/README.md, "Small data"); the smaller batch (min_steps_per_epoch) is what helped."""
    return int(round(cfg.warmup_epochs * steps_per_epoch))


def build_optimizer(model, cfg: TrainConfig, steps_per_epoch: int, device):
    """SGD (Nesterov) - fused on CUDA, foreach elsewhere - and its per-step LambdaLR schedule."""
    import torch

    kwargs = dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    # Fused SGD matters on the GPU: without it, torch.compile was measured slower than eager on an H100
    # (38.8k vs 42.7k img/s, ResNet-18 batch 1024, 2026-11-24; with it 81.4k compiled vs 59.9k eager).
    impl = {"fused": True} if device.type == "cuda" else {"foreach": True}
    groups = param_groups(model, cfg.weight_decay, cfg.backbone_lr_scale, cfg.lr, cfg.bn_bias_lr_scale)
    optimizer = torch.optim.SGD(groups, **kwargs, **impl)
    total = cfg.epochs * steps_per_epoch
    warmup = warmup_steps(cfg, steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_lambda, warmup=warmup, total=total, schedule=cfg.schedule, floor=cfg.lr_floor))
    return optimizer, scheduler


def build_ema(model, cfg: TrainConfig, steps_per_epoch: int):
    """The weight average evaluated and saved instead of the live weights (None when --ema is off)."""
    if cfg.ema is None:
        return None
    from fastcifar.train.levers import DeviceEMA

    return DeviceEMA(model, cfg.ema, every=cfg.ema_every,
                     start_step=int(round(cfg.ema_start_epochs * steps_per_epoch)))




# torch.compile guards every compiled frame on the module it was called with, and dynamo keeps one cache for the
# whole process: the Nth run of a sweep or a compare (a new model each time) recompiles the same code object, and
# past torch's recompile limit (8) it silently runs eager while the run says compiled. Each run therefore starts
# from a reset cache, with headroom for the eval/TTA shapes of one run, and records whether the limit was hit.
RECOMPILE_LIMIT = 32


class CompileRecord:
    """Compiles a model for one run and records what dynamo did: graphs compiled, and whether a recompile limit was
    hit (dynamo then runs that frame eagerly for the rest of the process)."""

    def __init__(self, model, mode: str | None):
        import logging

        import torch
        import torch._dynamo

        torch._dynamo.reset()
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        self._counters = torch._dynamo.utils.counters
        self._graphs_before = self._counters["stats"]["unique_graphs"]
        self.limit_hits: list[str] = []
        record = self

        class _LimitHits(logging.Handler):  # dynamo announces the fallback only as a log warning
            def emit(self, entry):
                text = entry.getMessage()
                if "hit config." in text:
                    record.limit_hits.append(text.splitlines()[0][:200])

        self._handler = _LimitHits(logging.WARNING)
        self._logger = logging.getLogger("torch._dynamo.convert_frame")
        self._logger.addHandler(self._handler)
        model.compile(mode=mode)  # in place: state_dict keys keep no `_orig_mod.` prefix

    def finish(self) -> dict:
        """{graphs, recompile_limit_hit, limit_messages}; stops listening to dynamo's log."""
        self._logger.removeHandler(self._handler)
        return {"graphs": int(self._counters["stats"]["unique_graphs"] - self._graphs_before),
                "recompile_limit_hit": bool(self.limit_hits), "limit_messages": self.limit_hits[:3]}


def autocast_factory(precision: str, device):
    """A zero-argument callable giving the autocast context for `precision` (nullcontext for fp32)."""
    import torch

    from fastcifar.precision import torch_dtype

    if precision == "fp32":
        return contextlib.nullcontext
    return partial(torch.autocast, device_type=device.type, dtype=torch_dtype(precision))


def make_step(net, optimizer, scheduler, scaler, autocast, criterion, *, ema_update=None):
    """The one training step: precision, loss scaling, compile and DDP are all decided by the objects passed.

    Returns step(images, labels) -> (loss, correct) as device tensors, so the caller syncs only when it wants.
    """

    def step(images, labels):
        with autocast():
            logits = net(images)
            loss = criterion(logits, labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if ema_update is not None:
            ema_update()
        return loss.detach(), (logits.argmax(1) == labels).sum()

    return step


def warm_up(step, model, opt, ema, scaler, *, batch_size: int, image_size: int, num_classes: int,
            memory_format, device, steps: int = 2) -> float:
    """Run `step` on throw-away random batches, then restore every state it touched; returns the seconds taken.

    Why: torch.compile compiles on the first call, which would otherwise land in epoch 1's clock (17 s on a fresh
    H100 machine, 3 s with a warm cache, against 0.64 s for a steady epoch; bench/README.md). airbench
    warms up the same way before it starts its timer. Model weights and buffers, optimizer, scheduler, EMA and
    loss scaler are restored exactly and the batches come from their own generator, so the run that follows is
    the run that would have happened without the warm-up (tests/test_train.py checks it bit for bit).
    """
    import copy

    import torch

    optimizer, scheduler = opt
    saved = {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
             "optimizer": copy.deepcopy(optimizer.state_dict()), "scheduler": copy.deepcopy(scheduler.state_dict()),
             "scaler": copy.deepcopy(scaler.state_dict()),
             "ema": None if ema is None else copy.deepcopy(ema.state_dict())}
    generator = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randn(batch_size, 3, image_size, image_size, generator=generator)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
    images = images.to(device).contiguous(memory_format=memory_format)
    labels = labels.to(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(images, labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    if ema is not None:
        ema.load_state_dict(saved["ema"])
    optimizer.zero_grad(set_to_none=True)
    return seconds
