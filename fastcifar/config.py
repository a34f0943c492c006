"""Typed, frozen configs for the commands that run long jobs, their presets and JSON round trip.

Owns `TrainConfig` (every knob of `fastcifar train`) and the presets: `seed` (the original study's 10-epoch
comparison), `fast` (best time-to-accuracy on a GPU) and `smoke` (a CPU-sized check). A config is
validated in `__post_init__` so a bad value fails before any work starts, and is saved as config.json in
every run directory (nanoGPT's habit: the config travels with the checkpoint).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from fastcifar.errors import FastCifarError
from fastcifar.precision import TRAIN_PRECISIONS, default_precision
from fastcifar.preprocess import CROP_PADDING, CROP_SCALE_MIN

SCHEDULES = ("linear", "cosine")
# torch.compile's modes (torch._inductor.list_mode_options()); anything else fails inside torch with a traceback.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
PRESET_NAMES = ("seed", "fast", "smoke")


def _refuse_unknown_keys(cls, d: dict, what: str) -> None:
    """A config file with keys this version does not know is refused, not silently half-read."""
    unknown = sorted(set(d) - {f.name for f in fields(cls)})
    if unknown:
        raise FastCifarError(f"unknown {what} keys: {', '.join(unknown)}")


_KINDS = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}


def _refuse_wrong_types(config) -> None:
    """A value of the wrong type (a JSON plan's `"lr": "fast"`, a Python caller's typo) is one message naming the
    field, not a TypeError from deep inside a check. The annotations are strings like 'float | None'."""
    for f in fields(config):
        value = getattr(config, f.name)
        allowed = [kind.strip() for kind in str(f.type).split("|")]
        if value is None and "None" in allowed:
            continue
        kinds = tuple(t for kind in allowed for t in _KINDS.get(kind, ()))
        # bool is an int to Python; a config field that wants a number never means True.
        if kinds and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
            raise FastCifarError(f"{f.name} must be {' or '.join(allowed)}, got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    # model
    arch: str = "resnet18"
    init: str = "random"  # random | imagenet | path to a torchvision state dict
    stem: str = "cifar"  # cifar | imagenet
    image_size: int = 32
    # data
    data_dir: str | None = None
    # auto | cifar10 | cifar100 | folder (fastcifar/data/datasets.py); auto: by what data_dir holds
    dataset: str = "auto"
    download: bool = True
    loader: str = "auto"  # auto | dali | tensor
    val_fraction: float = 0.1
    train_limit: int | None = None  # train on the first N training images (before the val split)
    # augmentation, in every loader: random horizontal flips (switch them off for data that is not mirror-symmetric:
    # digits, letters, text, signs, left/right anatomy), the random crop's zero padding in pixels (0 = no crop;
    # tensor and dali loaders) and the smallest area of dali-files' random-resized crop
    flip: bool = True
    crop_padding: int = CROP_PADDING
    crop_scale: float = CROP_SCALE_MIN
    # optimisation
    epochs: int = 10
    batch_size: int = 512  # global batch (split across ranks under torchrun)
    lr: float = 0.2  # peak learning rate for the global batch
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # not applied to BatchNorm weights and biases
    label_smoothing: float = 0.0
    warmup_epochs: float = 2.0
    # Small data (train/build.py): the batch shrinks (lr scaled with it) until an epoch has at least this many steps;
    # 0 keeps the batch (bench/README.md, "Small data").
    min_steps_per_epoch: int = 20
    schedule: str = "linear"  # decay after warm-up: linear | cosine (to zero)
    lr_floor: float = 0.0  # the schedule decays to this fraction of the peak lr (airbench94: 0.07), not to 0
    # Weight averaging: decay per optimizer step (horizon ~1/(1-decay) steps: 0.99 ~ 100 steps, a ~850-step run
    # wants no more), applied every `ema_every` steps from `ema_start_epochs` on; None = off. train/levers.py.
    ema: float | None = None
    ema_every: int = 5
    ema_start_epochs: float = 0.0
    zero_init_residual: bool = False  # zero the last BatchNorm scale of each residual block (random init only)
    backbone_lr_scale: float = 1.0  # lr multiplier for every tensor but the classifier (< 1: slower backbone)
    # Levers from airbench94 / Page's DAWNBench series (train/levers.py), off until a GPU run measures them.
    whiten_stem: bool = False  # first conv = frozen whitening filters of the training patches (random init only)
    bn_freeze_scales: bool = False  # BatchNorm scales frozen at their initial value
    bn_bias_lr_scale: float = 1.0  # lr multiplier for BatchNorm biases (airbench94: 64)
    alternating_flip: bool = False  # each image flipped on alternate epochs instead of at random
    tta: bool | None = None  # horizontal-flip test-time augmentation at evaluation; None: as `flip`
    tta_translate: bool = False  # + 1-px translations (reflect-padded) averaged in, as airbench94's tta_level 2
    # speed switches: None = the device's default (CUDA: bf16 + channels_last + compile; CPU: fp32, no compile)
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool | None = None
    compile_mode: str | None = None  # e.g. max-autotune-no-cudagraphs
    # bookkeeping
    save_state_every: int = 1  # epochs between state.pt saves (resume points); 0 = never (benchmark runs)
    save_best: bool = True  # keep best.safetensors, the epoch with the best validation accuracy (needs a val split)
    tensorboard: bool = False  # TensorBoard event files (needs the tensorboard package)
    tensorboard_dir: str | None = None  # where they go; None = <run dir>/tensorboard
    seed: int = 0
    out: str | None = None
    preset: str | None = None
    # Study arms (compare sets them; train takes them too). linear_probe: the backbone frozen in eval mode, its
    # features computed once per image and cached, only the classifier trained (train/linear_probe.py).
    # label_noise: this share of the training pool's labels (train and validation split; never the test set)
    # replaced by another class, uniformly, seeded by the run's seed (data/label_noise.py).
    linear_probe: bool = False
    label_noise: float = 0.0

    def __post_init__(self):
        from fastcifar.data.datasets import DATASETS
        from fastcifar.data.loaders import LOADER_KINDS
        from fastcifar.models import RESNETS, arch_problem

        _refuse_wrong_types(self)
        problem = arch_problem(self.arch, self.stem, self.image_size, "--image-size")
        checks = [
            (problem is None, problem),
            (self.loader in LOADER_KINDS, f"unknown loader '{self.loader}' (choose from {', '.join(LOADER_KINDS)})"),
            (self.dataset in DATASETS, f"unknown dataset '{self.dataset}' (choose from {', '.join(DATASETS)})"),
            (0.0 <= self.val_fraction < 1.0, f"--val-fraction must be in [0, 1), got {self.val_fraction}"),
            (0 <= self.crop_padding <= 16, f"--crop-padding must be 0-16 pixels, got {self.crop_padding}"),
            (0 < self.crop_scale <= 1, f"--crop-scale must be in (0, 1], got {self.crop_scale}"),
            (self.flip or not self.alternating_flip, "--alternating-flip flips every other epoch: drop --no-flip"),
            (self.train_limit is None or self.train_limit >= 10, "--train-limit must be at least 10 images"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (math.isfinite(self.lr) and self.lr > 0, f"--lr must be a finite number > 0, got {self.lr}"),
            (math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             f"--weight-decay must be a finite number >= 0, got {self.weight_decay}"),
            (0 <= self.momentum < 1 and (self.momentum > 0 or not self.nesterov),
             f"--momentum must be in [0, 1) (and > 0 with Nesterov), got {self.momentum}"),
            (0 <= self.lr_floor < 1, f"--lr-floor must be a fraction of the peak lr in [0, 1), got {self.lr_floor}"),
            (0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {self.warmup_epochs}"),
            (self.min_steps_per_epoch >= 0, f"--min-steps-per-epoch must be >= 0, got {self.min_steps_per_epoch}"),
            (self.schedule in SCHEDULES, f"unknown schedule '{self.schedule}' (choose from {', '.join(SCHEDULES)})"),
            (self.ema is None or 0 < self.ema < 1, f"--ema must be a decay in (0, 1), got {self.ema}"),
            (self.ema_every >= 1, f"--ema-every must be >= 1 step, got {self.ema_every}"),
            (self.ema_start_epochs >= 0, f"--ema-start-epochs must be >= 0, got {self.ema_start_epochs}"),
            (not (self.zero_init_residual or self.whiten_stem) or self.arch in RESNETS,
             "--zero-init-residual and --whiten-stem shape a ResNet's blocks and first conv: leave them out for "
             f"{self.arch}"),
            (not self.whiten_stem or self.init == "random",
             "--whiten-stem replaces the first convolution with fixed whitening filters: it needs a random init "
             "(it would discard the pretrained first layer)"),
            (not (self.bn_freeze_scales and self.zero_init_residual),
             "--bn-freeze-scales with --zero-init-residual would freeze residual branches at zero: choose one"),
            (math.isfinite(self.bn_bias_lr_scale) and self.bn_bias_lr_scale > 0,
             f"--bn-bias-lr-scale must be > 0, got {self.bn_bias_lr_scale}"),
            (self.save_state_every >= 0, f"--save-state-every must be >= 0 epochs, got {self.save_state_every}"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
            (0 < self.backbone_lr_scale <= 1,
             f"--backbone-lr-scale must be in (0, 1], got {self.backbone_lr_scale}"),
            (self.precision in TRAIN_PRECISIONS,
             f"unknown precision '{self.precision}' ({', '.join(TRAIN_PRECISIONS)})"),
            (self.compile_mode is None or self.compile_mode in COMPILE_MODES,
             f"unknown --compile-mode '{self.compile_mode}' (choose from {', '.join(COMPILE_MODES)})"),
            (self.preset is None or self.preset in PRESET_NAMES, f"unknown preset '{self.preset}'"),
            (0 <= self.label_noise < 1, f"--label-noise must be a share of the labels in [0, 1), got "
                                        f"{self.label_noise}"),
            (not self.linear_probe or self.init != "random",
             "--linear-probe trains a classifier on frozen features: it needs pretrained weights (--init)"),
        ]
        for ok, message in checks:
            if not ok:
                raise FastCifarError(message)

    def augmentation(self) -> dict:
        """What the run's images go through (model.json, summary.json and the report record it); a linear probe's
        cached features are of the unaugmented images (train/linear_probe.py)."""
        if self.linear_probe:
            return {"flip": False, "crop_padding": 0, "crop_scale": 1.0, "tta": self.flip if self.tta is None else
                    self.tta, "tta_translate": self.tta_translate, "loader": self.loader}
        return {"flip": self.flip, "crop_padding": self.crop_padding, "crop_scale": self.crop_scale,
                "tta": self.flip if self.tta is None else self.tta, "tta_translate": self.tta_translate,
                "loader": self.loader}

    def to_dict(self) -> dict:
        d = asdict(self)
        # Fields added after runs were saved stay out at their defaults: an earlier run's config.json, and a
        # compare's fingerprint (its default report directory), read the same as before.
        for key, default in _LATER_FIELDS.items():
            if d[key] == default:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        _refuse_unknown_keys(cls, d, "config")
        return cls(**d)

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            raise FastCifarError(f"cannot read the run config {path} ({exc})") from None

    def resolved(self, device_type: str) -> "TrainConfig":
        """Fill the device-dependent switches (CUDA bf16 + channels_last + compile; CPU fp32 eager) and flip TTA
        (as the training flips: a model trained without flips is not evaluated through them).

        The precision is precision.default_precision's; compile on the CPU bought nothing measurable for a minutes-long
        warm-up (bench/README.md, "Training throughput"), so the CPU runs eager.
        """
        cuda = device_type == "cuda"
        return replace(
            self,
            precision=self.precision if self.precision != "auto" else default_precision(device_type),
            channels_last=self.channels_last if self.channels_last is not None else cuda,
            compile=self.compile if self.compile is not None else cuda,
            tta=self.tta if self.tta is not None else self.flip,
        )


_LATER_FIELDS = {"linear_probe": False, "label_noise": 0.0}


# Presets set a budget and recipe; options given on the command line override them. A default is a measurement:
# each value's evidence (or that a GPU run has not measured it yet) is in docs/training.md, "Presets".
PRESETS: dict[str, dict] = {
    # The original study's budget, on the plain recipe measured on an H100 (lr 0.2 @ 512, 20 % warm-up).
    "seed": dict(epochs=10, val_fraction=0.1, batch_size=512, lr=0.2, warmup_epochs=2.0, schedule="linear",
                 label_smoothing=0.0),
    # Time to accuracy on a GPU (goal >= 94 % in <= 12 s on one H100): proposed, not yet measured on a GPU.
    "fast": dict(epochs=18, val_fraction=0.02, batch_size=1024, lr=0.4, warmup_epochs=3.6, schedule="linear",
                 label_smoothing=0.0),
    # A CPU-sized check that still learns (43.5 ± 1.3 % on 10k images; lr 0.025: bench/README.md, "Small data").
    "smoke": dict(epochs=2, train_limit=10000, val_fraction=0.1, batch_size=128, lr=0.025, warmup_epochs=0.4,
                  schedule="linear", stem="imagenet", image_size=32, label_smoothing=0.0),
}


# What a preset changes for another network (over PRESETS; the command line still wins). EfficientNet-Lite0 at 64 px
# (its 32x downsampling leaves a 1x1 map at 32 px: its pretrained arm gained 13-16 points at 64 px on the CPU, and
# more per second of training than 32 px on more images) and channels_last (its depthwise convolutions trained 1.3x
# faster so on the CPU too): bench/README.md, "EfficientNet-Lite0 on the CPU". Measured on a CPU only: on a GPU the
# same values are a proposal.
# Its stem is its own, the only one it has (models.arch_problem). The same values under every preset.
ARCH_PRESETS: dict[str, dict] = {"efficientnet_lite0": dict(stem="imagenet", image_size=64, channels_last=True)}


def describe_augmentation(aug: dict) -> str:
    """'random 4-px-padded crops and horizontal flips; flip TTA at evaluation' and the like, for people."""
    if aug.get("loader") == "dali-files":
        crop = f"random-resized crops of {100 * aug['crop_scale']:g}-100 % of the area"
    else:
        crop = f"random {aug['crop_padding']}-px-padded crops" if aug["crop_padding"] else "no random crop"
    flips = "horizontal flips" if aug["flip"] else "no flips"
    tta = " + 1-px translations" if aug.get("tta_translate") else ""
    return f"{crop} and {flips} in training; " + (f"flip TTA{tta} at evaluation" if aug["tta"] else
                                                  f"no flip TTA{' (translate TTA)' if tta else ''} at evaluation")


def make_train_config(preset: str | None, overrides: dict) -> TrainConfig:
    """TrainConfig from a preset plus explicit overrides (None values in `overrides` mean 'not given')."""
    if preset is not None and preset not in PRESETS:
        raise FastCifarError(f"unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
    given = {k: v for k, v in overrides.items() if v is not None}
    values = dict(PRESETS.get(preset, {}))
    values.update(ARCH_PRESETS.get(given.get("arch", TrainConfig.arch), {}))
    values.update(given)
    _refuse_unknown_keys(TrainConfig, values, "training option")
    return TrainConfig(**values, preset=preset) if "preset" not in values else TrainConfig(**values)


MIN_BATCH = 8  # BatchNorm statistics over fewer images are too noisy to train with


def fit_batch(batch_size: int, lr: float, n_train: int, min_steps: int) -> tuple[int, float]:
    """(batch, lr) giving at least `min_steps` steps per epoch on `n_train` images: the batch halves to a power of two
    (not below MIN_BATCH) and the lr scales with it (linearly, Goyal et al.'s rule). With 1-3 steps per epoch the
    warm-up and decay of the schedule would be a handful of steps and mean nothing."""
    if not min_steps or n_train // batch_size >= min_steps:
        return batch_size, lr
    fitted = min(batch_size, max(MIN_BATCH, 2 ** int(math.log2(max(n_train // min_steps, 1)))))
    return fitted, lr * fitted / batch_size


# ---------------------------------------------------------------------------------------------- compare

# `compare --arms`: the study's arms by name, and the key each has in run directory names and results.json (`init`:
# the fine-tuned and the scratch arm keep the names reports had before the linear probe came).
ARMS = {"finetune": "imagenet", "linear-probe": "probe", "scratch": "random"}
DEFAULT_ARMS = ("finetune", "scratch")
IF_NO_WEIGHTS = ("fail", "stand-in")
# Every final model of a compare is evaluated under each corruption at these severities (fp32, no TTA): ~12 s per
# smoke model on 2 CPU cores. --robustness-severities none skips the evaluation.
ROBUSTNESS_SEVERITIES = (1, 3, 5)
# (number of seeds, training-set fractions) when --seeds / --fractions are not given. A GPU affords 3 x 3 points
# of 10-epoch runs in minutes; the CPU smoke budget affords 2 seeds x 2 fractions (8 runs).
COMPARE_DEFAULTS: dict[str, tuple[int, tuple[float, ...]]] = {
    "seed": (3, (0.01, 0.1, 1.0)), "fast": (3, (0.01, 0.1, 1.0)), "smoke": (2, (0.1, 1.0)),
}
# Each arm's peak lr is chosen from this grid on the validation split when --lr-grid is not given: the preset's own
# lr and its neighbours (lower ones: fine-tuning a pretrained backbone usually wants a smaller step). Which value wins
# for which arm is what the selection measures; results.json records it.
COMPARE_LR_GRIDS: dict[str, tuple[float, ...]] = {
    "seed": (0.05, 0.1, 0.2), "fast": (0.1, 0.2, 0.4), "smoke": (0.025, 0.05),
}


def parse_settings(text: str, arch: str = "resnet18") -> tuple[tuple[int, str], ...]:
    """`--image-sizes 32,224` or `32:cifar,224:imagenet` -> ((32, "cifar"), (224, "imagenet")); a size without a stem
    gets the arch's (models.native_stem: a ResNet CIFAR's at the native 32 px, above it the ImageNet stem, where at
    224 px it sees images as ImageNet features were learned, the original study's setting)."""
    from fastcifar.models import native_stem

    settings = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        size, _, stem = part.partition(":")
        try:
            settings.append((int(size), stem or native_stem(arch, int(size))))
        except ValueError:
            raise FastCifarError(f"--image-sizes takes sizes like 32,224 or 32:cifar,224:imagenet; got '{part}'") \
                from None
    return tuple(settings)


def parse_fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise FastCifarError(f"--fractions must be comma-separated numbers like 0.01,0.1,1.0, got '{text}'") from None


def parse_counts(text: str, what: str, *, sort: bool = False) -> tuple[int, ...]:
    """`1,8,32` -> (1, 8, 32): whole numbers >= 1 for the option `what` (bench's --batch-sizes in the order given,
    its load test's --concurrency and request sizes with `sort`: distinct, ascending)."""
    try:
        values = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise FastCifarError(f"{what} must be comma-separated integers like 1,64,256, got '{text}'") from None
    if not values or min(values) < 1:
        raise FastCifarError(f"{what} must be positive integers, got '{text}'")
    return tuple(sorted(set(values))) if sort else tuple(values)


def parse_lr_grid(text: str) -> tuple[float, ...] | None:
    """`--lr-grid 0.05,0.1,0.2` -> (0.05, 0.1, 0.2); `none` -> None (one shared lr)."""
    if text.strip().lower() == "none":
        return None
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise FastCifarError(f"--lr-grid takes comma-separated learning rates like 0.05,0.1,0.2, or none; got "
                             f"'{text}'") from None


def setting_name(setting: tuple[int, str]) -> str:
    return f"{setting[0]}px-{setting[1]}"


@dataclass(frozen=True)
class CompareConfig:
    """`fastcifar compare`: both inits x settings x seeds x training-set fractions on one recipe (`base`).

    `base` is every training option both arms share; compare sets `init`, `seed`, `train_limit`, `out`, the
    setting's `image_size`/`stem`, each arm's `lr` (chosen from `lr_grid` on the validation split, or base.lr for
    both when it is None) and, for small fractions, `batch_size` per run. Saved as compare.json in the report
    directory, so a rerun with other options cannot silently mix two experiments.
    """

    base: TrainConfig
    seeds: tuple[int, ...] = (0, 1, 2)
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)  # of the training pool (all images, or base.train_limit)
    pretrained_weights: str | None = None  # torchvision-format state dict; None = torchvision's download/cache
    if_no_weights: str = "fail"  # fail | stand-in: when the ImageNet weights cannot be had (offline, no file)
    out: str | None = None  # None: reports/<arch>-<preset>-<fingerprint>, so rerunning the same options resumes
    lr_grid: tuple[float, ...] | None = None  # None: both arms train at base.lr
    settings: tuple[tuple[int, str], ...] = ()  # (image size, stem) pairs; () = base's one setting
    robustness_severities: tuple[int, ...] = ROBUSTNESS_SEVERITIES  # () = no robustness evaluation
    # Seconds the whole study may take on the machine that starts it: its training pool shrinks to fit, measured
    # there (study/sizing.py). None: the study as asked, however long it takes.
    time_budget_s: float | None = None
    # The axes beyond the two arms (docs/compare.md, "Beyond two arms"): which arms; the scratch arm's schedules as
    # multiples of base.epochs (1 always among them); the label-noise levels every arm trains at (0 always among
    # them: the clean study is the reference).
    arms: tuple[str, ...] = DEFAULT_ARMS
    scratch_epochs: tuple[int, ...] = (1,)
    label_noise: tuple[float, ...] = (0.0,)

    def __post_init__(self):
        object.__setattr__(self, "arms", tuple(a for a in ARMS if a in set(self.arms)) if set(self.arms) <= set(ARMS)
                           else tuple(self.arms))
        object.__setattr__(self, "scratch_epochs", tuple(sorted({int(k) for k in self.scratch_epochs})))
        object.__setattr__(self, "label_noise", tuple(sorted({float(p) for p in self.label_noise})))
        if isinstance(self.base, dict):
            object.__setattr__(self, "base", TrainConfig.from_dict(self.base))
        # JSON gives lists; fractions are kept sorted so "0.1,1.0" and "1.0,0.1" are the same experiment.
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "fractions", tuple(sorted(float(f) for f in self.fractions)))
        if self.lr_grid is not None:
            object.__setattr__(self, "lr_grid", tuple(sorted(float(lr) for lr in self.lr_grid)))
        object.__setattr__(self, "robustness_severities", tuple(sorted({int(s) for s in self.robustness_severities})))
        settings = tuple((int(size), str(stem)) for size, stem in self.settings)
        if isinstance(self.base, TrainConfig) and not settings:
            settings = ((self.base.image_size, self.base.stem),)
        object.__setattr__(self, "settings", settings)
        checks = [
            (isinstance(self.base, TrainConfig), "CompareConfig.base must be a TrainConfig"),
            (len(self.seeds) >= 1, "--seeds must be at least 1"),
            (len(set(self.seeds)) == len(self.seeds), f"seeds must be distinct, got {list(self.seeds)}"),
            (len(self.fractions) >= 1, "--fractions needs at least one value"),
            (all(0 < f <= 1 for f in self.fractions),
             f"--fractions must each be in (0, 1], got {','.join(f'{f:g}' for f in self.fractions)}"),
            (len(set(self.fractions)) == len(self.fractions), "--fractions must be distinct"),
            (self.base.init == "random", "compare trains both inits itself: leave out --init and give the ImageNet "
                                         "weights with --pretrained-weights PATH (or let torchvision download them)"),
            (self.if_no_weights in IF_NO_WEIGHTS,
             f"unknown --if-no-weights '{self.if_no_weights}' (choose from {', '.join(IF_NO_WEIGHTS)})"),
            (self.lr_grid is None or (len(self.lr_grid) >= 1 and all(lr > 0 for lr in self.lr_grid)),
             "--lr-grid needs positive learning rates (or none)"),
            (self.lr_grid is None or len(set(self.lr_grid)) == len(self.lr_grid), "--lr-grid values must be distinct"),
            (self.lr_grid is None or self.base.val_fraction > 0,
             "--lr-grid chooses each arm's lr on the validation split: give --val-fraction > 0, or --lr-grid none"),
            (len(set(settings)) == len(settings), "--image-sizes must be distinct"),
            (all(1 <= s <= 5 for s in self.robustness_severities), "--robustness-severities must be within 1-5"),
            (self.time_budget_s is None or self.time_budget_s > 0, "--time-budget must be > 0 minutes (or 0: none)"),
            (set(self.arms) <= set(ARMS), f"unknown --arms {','.join(a for a in self.arms if a not in ARMS)} "
                                          f"(choose from {', '.join(ARMS)})"),
            ("scratch" in self.arms and len(self.arms) >= 2,
             "--arms needs scratch (every gap is measured against it) and at least one pretrained arm "
             "(finetune, linear-probe)"),
            (1 in self.scratch_epochs and min(self.scratch_epochs) >= 1,
             "--scratch-epochs takes whole multiples of the preset's epochs and must include 1, e.g. 1,3"),
            (0.0 in self.label_noise and all(0 <= p < 1 for p in self.label_noise),
             "--label-noise takes shares of the labels in [0, 1) and must include 0 (the clean reference), e.g. "
             "0,0.2,0.4"),
        ]
        for ok, message in checks:
            if not ok:
                raise FastCifarError(message)
        from fastcifar.models import arch_problem

        for size, stem in settings:  # the same checks as a training run's, before anything is written
            problem = arch_problem(self.base.arch, stem, size, "--image-sizes")  # the option the sizes came from
            if problem:
                raise FastCifarError(problem)
            replace(self.base, image_size=size, stem=stem)
        if not self.out:
            object.__setattr__(self, "out", f"reports/{self.base.arch}-{self.base.preset}-{self.fingerprint()}")

    def to_dict(self) -> dict:
        return {"base": self.base.to_dict(), "seeds": list(self.seeds), "fractions": list(self.fractions),
                "pretrained_weights": self.pretrained_weights, "if_no_weights": self.if_no_weights, "out": self.out,
                "lr_grid": None if self.lr_grid is None else list(self.lr_grid),
                "settings": [list(s) for s in self.settings],
                "robustness_severities": list(self.robustness_severities), "time_budget_s": self.time_budget_s,
                # the later axes only when used: a two-arm study's compare.json and fingerprint read as before
                **({"arms": list(self.arms)} if self.arms != DEFAULT_ARMS else {}),
                **({"scratch_epochs": list(self.scratch_epochs)} if self.scratch_epochs != (1,) else {}),
                **({"label_noise": list(self.label_noise)} if self.label_noise != (0.0,) else {})}

    @property
    def inits(self) -> tuple[str, ...]:
        """The arms' keys in run names and results.json (ARMS), in the study's order."""
        return tuple(ARMS[a] for a in self.arms)

    @classmethod
    def from_dict(cls, d: dict) -> "CompareConfig":
        _refuse_unknown_keys(cls, d, "compare config")
        return cls(**{**d, "base": TrainConfig.from_dict(d.get("base", {}))})

    @classmethod
    def load(cls, path: Path) -> "CompareConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            raise FastCifarError(f"cannot read the compare config {path} ({exc})") from None

    def fingerprint(self) -> str:
        """8 hex digits naming the experiment (everything but `out`): the default report directory's suffix."""
        import hashlib

        d = self.to_dict()
        d.pop("out")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


def make_compare_config(preset: str, overrides: dict, *, seeds: int | None = None, fractions: str | None = None,
                        lr_grid: str | None = None, image_sizes: str | None = None,
                        pretrained_weights: str | None = None, if_no_weights: str = "fail",
                        out: str | None = None, robustness_severities: str | None = None,
                        time_budget_min: float | None = None, arms: str | None = None,
                        scratch_epochs: str | None = None, label_noise: str | None = None) -> CompareConfig:
    """CompareConfig from a preset, train overrides (None = not given) and compare's own options as typed.

    The defaults the CLI documents live here, so Python callers get the same experiment: the preset's number of
    seeds (counted from overrides' `seed`, default 0), fractions and lr grid (no grid when `lr` is given: one
    shared lr), the preset's one setting, and the report directory reports/<arch>-<preset>-<fingerprint>.
    """
    overrides = dict(overrides)
    first_seed = overrides.pop("seed", None) or 0
    if overrides.get("save_best") is None:  # the report uses the final models: no second file per run unless asked
        overrides["save_best"] = False
    default_seeds, default_fractions = COMPARE_DEFAULTS[preset]
    if lr_grid is not None:
        grid = parse_lr_grid(lr_grid)
    else:
        grid = None if overrides.get("lr") is not None else COMPARE_LR_GRIDS[preset]
    base = make_train_config(preset, overrides)
    return CompareConfig(base=base,
                         seeds=tuple(range(first_seed, first_seed + (seeds or default_seeds))),
                         fractions=parse_fractions(fractions) if fractions else default_fractions,
                         pretrained_weights=pretrained_weights, if_no_weights=if_no_weights, lr_grid=grid,
                         settings=parse_settings(image_sizes, base.arch) if image_sizes else (), out=out,
                         robustness_severities=_parse_robustness(robustness_severities),
                         time_budget_s=60.0 * time_budget_min if time_budget_min else None,
                         arms=_parse_list(arms, "--arms", str) if arms else DEFAULT_ARMS,
                         scratch_epochs=_parse_list(scratch_epochs, "--scratch-epochs", int) if scratch_epochs
                         else (1,),
                         label_noise=_parse_list(label_noise, "--label-noise", float) if label_noise else (0.0,))


def _parse_list(text: str, option: str, kind) -> tuple:
    """`--arms finetune,scratch`, `--scratch-epochs 1,3`, `--label-noise 0,0.2`: comma-separated values of `kind`."""
    try:
        return tuple(kind(part.strip()) for part in text.split(",") if part.strip())
    except ValueError:
        examples = {str: "finetune,linear-probe,scratch", int: "1,3", float: "0,0.2,0.4"}
        raise FastCifarError(f"{option} takes comma-separated values like {examples[kind]}; got '{text}'") from None


def _parse_robustness(text: str | None) -> tuple[int, ...]:
    """`--robustness-severities 1,3,5` / `1-5` / `none` -> severities (None: the default)."""
    if text is None:
        return ROBUSTNESS_SEVERITIES
    if text.strip().lower() == "none":
        return ()
    from fastcifar.robustness import parse_severities

    return parse_severities(text, option="--robustness-severities")
