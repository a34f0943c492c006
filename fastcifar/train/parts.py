"""The parts `fastcifar.train.loop` assembles: run directory, model, data, optimizer, precision, state, progress.

Each function takes explicit arguments and returns what it built, so the training loop reads top to bottom.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from fastcifar.config import TrainConfig
from fastcifar.errors import FastCifarError
from fastcifar.runtime import DistInfo



# ---------------------------------------------------------------------------------------------- distributed


def init_distributed(dist: DistInfo, device) -> None:
    """torchrun: NCCL between GPUs, gloo on CPU."""
    if not dist.enabled:
        return
    import torch
    import torch.distributed as td

    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not td.is_initialized():
        td.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                              device_id=device if device.type == "cuda" else None)


def destroy_distributed(dist: DistInfo) -> None:
    if dist.enabled:
        import torch.distributed as td

        if td.is_initialized():
            td.destroy_process_group()


def wrap_distributed(model, dist: DistInfo, device):
    if not dist.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


# ---------------------------------------------------------------------------------------------- run directory


def prepare_run_dir(cfg: TrainConfig, resume_dir: Path | None, dist: DistInfo) -> tuple[Path, Path | None]:
    """(the run directory, the topmost directory this call created or None): the one being resumed, or a new one
    named by --out or rundir.default_run_name, agreed on by every rank and created by rank 0 (fastcifar/rundir.py)."""
    from fastcifar.rundir import create_run_dir, default_run_name

    if resume_dir is not None:
        return Path(resume_dir), None
    name = [str(Path(cfg.out) if cfg.out else Path("runs") / default_run_name(cfg.arch, cfg.init))]
    if dist.enabled:  # every rank must use rank 0's timestamped name
        import torch.distributed as td

        td.broadcast_object_list(name, src=0)
    run_dir = Path(name[0])
    return run_dir, create_run_dir(run_dir) if dist.is_main else None


# ---------------------------------------------------------------------------------------------- model + data


def build_model(cfg: TrainConfig, device):
    import torch

    from fastcifar.models import create_model

    torch.manual_seed(cfg.seed)  # same seed -> same random init on every rank
    model, spec = create_model(cfg.arch, cfg.init, cfg.stem, image_size=cfg.image_size,
                               zero_init_residual=cfg.zero_init_residual)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    return model.to(device=device, memory_format=memory_format), spec


@dataclass
class TrainData:
    train: object
    val: object | None
    test: object
    train_options: object
    n_train: int
    n_val: int
    n_test: int
    root: Path
    kind: str
    train_images: object  # the training split's uint8 NHWC pixels on the host (the whitened stem is fitted on them)


def split_train_val(n: int, val_fraction: float, seed: int):
    """A seeded split of `n` training indices into (train, val): val is `round(n * val_fraction)` images."""
    import numpy as np

    order = np.random.default_rng([seed, 12345]).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def build_data(cfg: TrainConfig, spec, dist: DistInfo, device, dataset=None) -> TrainData:
    """Load CIFAR-10 (or take `dataset`, a loaded `CifarData`: a sweep of many runs reads the files once), apply
    --train-limit and the validation split, and build the three loaders."""
    from fastcifar.data.cifar import load_cifar10
    from fastcifar.data.loaders import make_loader
    from fastcifar.data.plan import LoaderOptions

    data = dataset if dataset is not None else load_cifar10(cfg.data_dir, download=cfg.download,
                                                            progress=dist.is_main)
    images, labels = data.train.images, data.train.labels
    if cfg.train_limit is not None:
        images, labels = images[:cfg.train_limit], labels[:cfg.train_limit]
    train_idx, val_idx = split_train_val(len(labels), cfg.val_fraction, cfg.seed)
    per_rank_batch = max(cfg.batch_size // dist.world_size, 1)
    if len(train_idx) // dist.world_size < per_rank_batch:
        held = f" ({len(val_idx)} of {len(labels)} are held out by --val-fraction {cfg.val_fraction:g})" \
            if len(val_idx) else ""
        raise FastCifarError(f"{len(train_idx)} training images{held} cannot fill one batch of {cfg.batch_size}; "
                             "lower --batch-size" + (" or --val-fraction" if len(val_idx) >= len(train_idx) else "")
                             + (" or raise --train-limit" if cfg.train_limit is not None else ""))
    common = dict(image_size=cfg.image_size, mean=spec.mean, std=spec.std, channels_last=bool(cfg.channels_last))
    train_opts = LoaderOptions(batch_size=per_rank_batch, train=True, seed=cfg.seed, rank=dist.rank,
                               world_size=dist.world_size, alternating_flip=cfg.alternating_flip, **common)
    eval_opts = LoaderOptions(batch_size=max(cfg.batch_size, 256), train=False, **common)
    loader = partial(make_loader, kind=cfg.loader, device=device)
    train_images = images[train_idx]
    train_loader = loader(train_images, labels[train_idx], train_opts)
    val_loader = loader(images[val_idx], labels[val_idx], eval_opts) if len(val_idx) else None
    test_loader = loader(data.test.images, data.test.labels, eval_opts)
    kind = type(train_loader).__name__.replace("Loader", "").lower()
    return TrainData(train=train_loader, val=val_loader, test=test_loader, train_options=train_opts,
                     n_train=len(train_idx), n_val=len(val_idx), n_test=len(data.test), root=data.root.resolve(),
                     kind=kind, train_images=train_images)


# ---------------------------------------------------------------------------------------------- optimisation


def param_groups(model, weight_decay: float, backbone_lr_scale: float = 1.0,
                 lr: float | None = None, bn_bias_lr_scale: float = 1.0) -> list[dict]:
    """No weight decay on BatchNorm weights and on biases (1-d tensors): decaying them only hurts.

    With `backbone_lr_scale` != 1 every tensor but the classifier (`fc.*`) gets `lr * backbone_lr_scale`, so a
    pretrained backbone moves slower than the new head (two more groups). With `bn_bias_lr_scale` != 1 the
    BatchNorm biases get their own group at `lr * bn_bias_lr_scale` (airbench94's `bias_scaler`, 64 there, paired
    with frozen BatchNorm scales). Frozen tensors (requires_grad False) are left out. At 1 and 1 the two historical
    groups are kept, so the saved optimizer state of an interrupted run still loads.
    """
    from fastcifar.train.levers import batchnorm_bias_ids

    split_head = backbone_lr_scale != 1.0
    bn_biases = batchnorm_bias_ids(model) if bn_bias_lr_scale != 1.0 else set()
    groups: dict[tuple[bool, bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            head = split_head and name.split(".", 1)[0] == "fc"
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
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
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


def apply_levers(model, spec, cfg: TrainConfig, train_images) -> list[str]:
    """Freeze what the config freezes before the optimizer sees the parameters: the whitened stem (computed from
    the first of `train_images`, uint8 NHWC, preprocessed as `spec` says) and the BatchNorm scales.
    Returns one phrase per lever in use (the others act in the loss, optimizer, loader and evaluation), for the run
    header and summary.json."""
    from fastcifar.train.levers import WHITEN_IMAGES, freeze_batchnorm_scales, whiten_first_conv

    notes = [text for on, text in (
        (cfg.label_smoothing > 0, f"label smoothing {cfg.label_smoothing:g}"),
        (cfg.ema is not None, f"EMA decay {cfg.ema} every {cfg.ema_every} steps from epoch {cfg.ema_start_epochs:g}"),
        (cfg.lr_floor > 0, f"lr floor {cfg.lr_floor:g} x peak"),
        (cfg.bn_bias_lr_scale != 1, f"BatchNorm bias lr x{cfg.bn_bias_lr_scale:g}"),
        (cfg.alternating_flip, "alternating flip"),
        (cfg.tta_translate, "translate TTA"),
    ) if on]
    if cfg.whiten_stem:
        from fastcifar.preprocess import normalize_images

        images = normalize_images(train_images[:WHITEN_IMAGES], spec)
        dims = whiten_first_conv(model, images.to(next(model.parameters()).device))
        notes.append(f"whitened stem ({dims} directions from {min(len(train_images), WHITEN_IMAGES):,} "
                     "training images, frozen)")
    if cfg.bn_freeze_scales:
        notes.append(f"{freeze_batchnorm_scales(model)} BatchNorm scales frozen")
    return notes


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
    H100 machine, 3 s with a warm cache, against 0.64 s for a steady epoch; ../shared/measurements). airbench
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


# ---------------------------------------------------------------------------------------------- state


def save_state(path: Path, epoch: int, train_seconds: float, model, opt, ema, scaler) -> None:
    """Everything needed to continue exactly after `epoch` (loaded back with weights_only=True)."""
    import torch

    from fastcifar.fileio import atomic_path

    optimizer, scheduler = opt
    state = {
        "epoch": epoch, "train_seconds": train_seconds, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None, "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path, model, opt, ema, scaler, device) -> tuple[int, float]:
    import torch

    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign file
        raise FastCifarError(f"cannot resume from {path}: unreadable ({type(exc).__name__})") from None
    optimizer, scheduler = opt
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    if ema is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    torch.set_rng_state(state["torch_rng"].cpu())
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
    return int(state["epoch"]), float(state["train_seconds"])


# ---------------------------------------------------------------------------------------------- progress


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
