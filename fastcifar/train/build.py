"""What a training run is built from: its run directory, the model, the data (split, loaders) and the levers that
freeze parameters before the optimizer sees them. Each function takes explicit arguments and returns what it built,
so the loop (loop.py) reads top to bottom.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

from fastcifar.config import TrainConfig
from fastcifar.errors import FastCifarError
from fastcifar.runtime import DistInfo


def open_run_dir(cfg: TrainConfig, resume_dir: Path | None, dist: DistInfo):
    """The run's rundir.RunDir: the one being resumed, or a new one named by --out or rundir.default_run_name, agreed
    on by every rank; rank 0 creates or opens it and holds its lock (fileio.DirLock) until the run ends."""
    from fastcifar.rundir import RunDir, default_run_name, is_finished

    if resume_dir is not None:
        if not dist.is_main:
            return RunDir(resume_dir)
        run = RunDir.open(resume_dir)
        if is_finished(resume_dir):  # under the lock: another process may have finished it since resume() looked
            run.release()
            raise FastCifarError(f"{resume_dir} already finished; nothing to resume")
        return run
    name = [str(Path(cfg.out) if cfg.out else Path("runs") / default_run_name(cfg.arch, cfg.init))]
    if dist.enabled:  # every rank must use rank 0's timestamped name
        import torch.distributed as td

        td.broadcast_object_list(name, src=0)
    return RunDir.create(name[0]) if dist.is_main else RunDir(name[0])


def read_init(cfg: TrainConfig) -> tuple | None:
    """The --init weights (models.init_weights), read and fitted to the arch and stem before the data loads, so a bad
    --init fails in seconds rather than after the data (docs/training.md); None for a random init, and for a ResNet's
    `imagenet`, which build_model fetches after the data as before: torchvision's download is no typo to catch, and
    in the Docker layout its cache ($TORCH_HOME) sits inside the data folder, where it must not be yet when CIFAR-10
    is downloaded (download.py refuses a folder of other files). The fit is tried on a throw-away model with
    CIFAR-10's classes: the classifier, the only layer the dataset shapes, is never loaded."""
    from fastcifar.models import RESNETS, build_model as build_network, init_weights, load_pretrained

    if cfg.init == "imagenet" and cfg.arch in RESNETS:
        return None
    weights = init_weights(cfg.arch, cfg.init)
    if weights is not None:
        load_pretrained(build_network(cfg.arch, cfg.stem, image_size=cfg.image_size), weights[0], cfg.arch, cfg.stem)
    return weights


def build_model(cfg: TrainConfig, device, class_names=None, weights: tuple | None = None):
    """The model for `class_names` (the dataset's; None: CIFAR-10's ten), from `weights` when read_init read them."""
    import torch

    from fastcifar.models import create_model

    torch.manual_seed(cfg.seed)  # same seed -> same random init on every rank
    names = {} if class_names is None else {"num_classes": len(class_names), "class_names": tuple(class_names)}
    model, spec = create_model(cfg.arch, cfg.init, cfg.stem, image_size=cfg.image_size,
                               zero_init_residual=cfg.zero_init_residual, weights=weights, **names)
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
    info: dict  # the dataset (fastcifar/data/datasets.py): kind, root, test split's source, skipped files
    test_files: list | None = None  # an image folder's test images, relative to it (model.json records them)
    # The run's data as the study pairs it (summary.json's `data_stream`): the training indices and labels (noisy ones
    # with --label-noise), the validation images and labels, and how many labels the noise replaced.
    train_labels: object = None
    val_images: object = None
    val_labels: object = None
    train_indices: object = None
    noisy: int = 0
    test_arrays: tuple | None = None  # (uint8 images, labels) of the test split (the linear probe caches features)


def fit_to_data(cfg: TrainConfig, n_images: int, world_size: int = 1) -> tuple[TrainConfig, str | None]:
    """`cfg` with the batch (and lr, linearly) shrunk so an epoch of the training split has at least
    `cfg.min_steps_per_epoch` steps (config.fit_batch), and a note saying so (None when nothing changed).
    `n_images`: the training pool before the validation split."""
    from dataclasses import replace

    from fastcifar.config import fit_batch

    pool = min(n_images, cfg.train_limit or n_images)
    n_train = pool - int(round(pool * cfg.val_fraction))
    batch, lr = fit_batch(cfg.batch_size, cfg.lr, n_train // max(world_size, 1) * max(world_size, 1),
                          cfg.min_steps_per_epoch)
    if batch == cfg.batch_size:
        return cfg, None
    note = (f"{n_train:,} training images make {n_train // cfg.batch_size} steps of batch {cfg.batch_size} per epoch: "
            f"batch {batch}, lr {cfg.lr:g} -> {lr:.4g} (at least {cfg.min_steps_per_epoch} steps per epoch; "
            "--min-steps-per-epoch 0 keeps the batch)")
    return replace(cfg, batch_size=batch, lr=lr), note


def split_train_val(n: int, val_fraction: float, seed: int):
    """A seeded split of `n` training indices into (train, val): val is `round(n * val_fraction)` images."""
    import numpy as np

    order = np.random.default_rng([seed, 12345]).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def load_data(cfg: TrainConfig, dist: DistInfo):
    """The dataset `cfg` names (`--dataset`, default auto: CIFAR-10, CIFAR-100 or an image folder by what
    --data-dir holds), both splits, as CifarData."""
    from fastcifar.data.datasets import load_dataset

    return load_dataset(cfg.data_dir, cfg.dataset, download=cfg.download, progress=dist.is_main)


def build_data(cfg: TrainConfig, spec, dist: DistInfo, device, data) -> TrainData:
    """From `data` (the loaded `CifarData`: load_data's, or a sweep's, which reads the files once for many runs):
    apply --train-limit and the validation split, and build the three loaders."""
    from fastcifar.data.folder import relative_files
    from fastcifar.data.loaders import make_loader
    from fastcifar.data.loader_contract import LoaderOptions

    from fastcifar.data.label_noise import noisy_labels

    images, labels = data.train.images, data.train.labels
    if cfg.train_limit is not None:
        images, labels = images[:cfg.train_limit], labels[:cfg.train_limit]
    # The pool's labels, as noisy as asked, before the split: validation is as noisy as a user's own held-out labels
    # would be; the test set stays clean.
    labels, flipped = noisy_labels(labels, cfg.label_noise, cfg.seed, len(data.class_names))
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
                               world_size=dist.world_size, flip=cfg.flip, alternating_flip=cfg.alternating_flip,
                               crop_padding=cfg.crop_padding, crop_scale=(cfg.crop_scale, 1.0), **common)
    eval_opts = LoaderOptions(batch_size=max(cfg.batch_size, 256), train=False, **common)
    train_images = images[train_idx]
    if cfg.loader == "dali-files":  # DALI decodes the folder's files itself (fastcifar/data/dali_files.py)
        from fastcifar.data.dali_files import DaliFileLoader

        if not data.files:
            raise FastCifarError("--loader dali-files reads an image folder's files (DIR/train/<class>/...); "
                                 f"{data.info.get('dataset', 'CIFAR-10')} comes as arrays: use --loader tensor or dali")
        files = data.files["train"][:len(labels)]
        loader = partial(DaliFileLoader, device=device)
        train_loader = loader([files[i] for i in train_idx], labels[train_idx], train_opts)
        val_loader = loader([files[i] for i in val_idx], labels[val_idx], eval_opts) if len(val_idx) else None
        test_loader = loader(data.files["test"], data.test.labels, eval_opts)
    else:
        loader = partial(make_loader, kind=cfg.loader, device=device)
        train_loader = loader(train_images, labels[train_idx], train_opts)
        val_loader = loader(images[val_idx], labels[val_idx], eval_opts) if len(val_idx) else None
        test_loader = loader(data.test.images, data.test.labels, eval_opts)
    kind = "dali-files" if cfg.loader == "dali-files" else type(train_loader).__name__.replace("Loader", "").lower()
    return TrainData(train=train_loader, val=val_loader, test=test_loader, train_options=train_opts,
                     n_train=len(train_idx), n_val=len(val_idx), n_test=len(data.test), root=data.root.resolve(),
                     kind=kind, train_images=train_images,
                     info=dict(data.info) or {"dataset": "cifar10", "root": str(data.root)},
                     test_files=relative_files(data.root, data.files["test"]) if data.files else None,
                     train_labels=labels[train_idx], val_images=images[val_idx], val_labels=labels[val_idx],
                     train_indices=train_idx, noisy=len(flipped), test_arrays=(data.test.images, data.test.labels))


def data_stream(data: TrainData, epochs: int, augmented: bool = True) -> dict:
    """What the run trained on, as digests a study compares between the arms of a seed (study/results.py pairs them):
    `subset` - the training indices into the pool and their labels (noisy ones included); `epochs` - per epoch, this
    rank's order, crop offsets and flips (loader_contract.epoch_plan, which every loader follows). A run without
    augmentation (the linear probe's cached features) digests its order only and says so."""
    import hashlib

    import numpy as np

    from fastcifar.data.loader_contract import epoch_plan

    def digest(*arrays) -> str:
        h = hashlib.sha256()
        for a in arrays:
            h.update(np.ascontiguousarray(a).astype(np.int64).tobytes())
        return h.hexdigest()[:16]

    plans = [epoch_plan(data.n_train, data.train_options, e) for e in range(epochs)]
    return {"subset": digest(data.train_indices, data.train_labels), "augmented": augmented,
            "epochs": [digest(p.order, p.dy, p.dx, p.flip) if augmented else digest(p.order) for p in plans]}


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
