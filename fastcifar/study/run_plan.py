"""The runs of a compare: one ordinary run directory per (arm, fraction, seed[, setting][, schedule][, label noise])
under `<out>/runs/`, the lr-selection runs under `<out>/lr-select/` (first seed, largest fraction, clean labels, one
per arm and grid value), and each arm's lr chosen from them on the validation split. Every arm of a point shares
every option and the same images, labels, order and augmentation (the seed's).

The axes beyond two arms (docs/compare.md, "Beyond two arms"): the linear-probe arm (`probe-...`: the fine-tuned
arm's weights and options, backbone frozen, trained on its cached features); the scratch
arm's longer schedules (`random-...-x3`: 3x the epochs, on clean labels only - the question is whether compute
closes the clean gap); every arm at each label-noise level (`...-n0.2`), at the preset's schedule."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from fastcifar.config import CompareConfig, TrainConfig, fit_batch, setting_name
from fastcifar.errors import FastCifarError
from fastcifar.rundir import TENSORBOARD_DIR, read_summary

RUNS_DIR, SELECT_DIR = "runs", "lr-select"


@dataclass(frozen=True)
class PlannedRun:
    name: str  # <init>-f<fraction>-s<seed>
    init: str  # the arm: imagenet (fine-tuned) | probe (linear probe) | random (scratch)
    fraction: float
    seed: int
    cfg: TrainConfig
    n_train: int  # training images after the validation split
    setting: tuple[int, str] = (32, "cifar")  # (image size, stem)
    epochs_x: int = 1  # the schedule as a multiple of the preset's epochs (the scratch arm's --scratch-epochs)
    noise: float = 0.0  # the share of noisy training labels (--label-noise)

    @property
    def core(self) -> bool:
        """A run of the clean study at the preset's schedule (the report's main tables)."""
        return self.epochs_x == 1 and self.noise == 0.0

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.out)

    @property
    def key(self) -> tuple[tuple[int, str], str]:
        """(setting, arm): what an lr choice applies to."""
        return self.setting, self.init


def run_name(init: str, fraction: float, seed: int, setting: tuple[int, str] | None = None, epochs_x: int = 1,
             noise: float = 0.0) -> str:
    return (f"{init}-f{fraction:g}-s{seed}" + (f"-{setting_name(setting)}" if setting else "")
            + (f"-x{epochs_x}" if epochs_x != 1 else "") + (f"-n{noise:g}" if noise else ""))


def _plan_one(cfg: CompareConfig, pool: int, pretrained_init: str, *, setting: tuple[int, str], init: str,
              fraction: float, seed: int, lr: float, folder: str, suffix: str = "", epochs_x: int = 1,
              noise: float = 0.0) -> PlannedRun:
    """One run of the experiment: the shared recipe with this point's data, seed, setting, arm, schedule, label
    noise and lr."""
    base = cfg.base
    limit = round(fraction * pool)
    if limit < 10:
        raise FastCifarError(f"--fractions {fraction:g} of {pool} training images is {limit} images; a run needs "
                             "at least 10")
    n_train = limit - int(round(limit * base.val_fraction))  # as fastcifar.train.build.split_train_val
    batch, run_lr = fit_batch(base.batch_size, lr, n_train, base.min_steps_per_epoch)
    name = run_name(init, fraction, seed, setting if len(cfg.settings) > 1 else None, epochs_x, noise) + suffix
    # With --tensorboard every run logs under the report, named arm/fraction/seed[/setting][/lrX for an lr-selection
    # run], so one `tensorboard --logdir REPORT/tensorboard` overlays both arms, all seeds and fractions.
    tb_parts = [init, f"f{fraction:g}", f"s{seed}"] + ([setting_name(setting)] if len(cfg.settings) > 1 else []) \
        + ([f"x{epochs_x}"] if epochs_x != 1 else []) + ([f"n{noise:g}"] if noise else [])
    # The linear probe trains for the preset's epochs too: an epoch on cached features costs next to nothing, but
    # training the head longer did not pay (66.6 % after 2 epochs, 65.4 % after 20; EfficientNet-Lite0, 64 px,
    # 2,700 CIFAR-10 images, lr 0.05, 1,000 test images; bench/README.md, "Linear probe epochs").
    epochs = base.epochs * epochs_x
    run_cfg = replace(base, init="random" if init == "random" else pretrained_init, seed=seed, train_limit=limit,
                      batch_size=batch, lr=run_lr, image_size=setting[0], stem=setting[1], epochs=epochs,
                      # the warm-up is the same share of the (longer) schedule
                      warmup_epochs=base.warmup_epochs * epochs / base.epochs,
                      linear_probe=init == "probe", label_noise=noise,
                      # as train/loop.setup sets them for a probe (a linear layer on cached 2-D features), so the run's
                      # saved config is the planned one
                      **({"compile": False, "channels_last": False} if init == "probe" else {}),
                      backbone_lr_scale=base.backbone_lr_scale if init == "imagenet" else 1.0,
                      out=str(Path(cfg.out) / folder / name),
                      tensorboard_dir=str(Path(cfg.out, TENSORBOARD_DIR, *tb_parts, suffix.strip("-") or ""))
                      if base.tensorboard else None)
    return PlannedRun(name=name, init=init, fraction=fraction, seed=seed, cfg=run_cfg, n_train=n_train,
                      setting=setting, epochs_x=epochs_x, noise=noise)


def pool_size(cfg: CompareConfig, n_available: int) -> int:
    """The training pool: all available images, or the first base.train_limit of them."""
    return min(cfg.base.train_limit or n_available, n_available)


def plan_selection(cfg: CompareConfig, n_available: int, pretrained_init: str) -> list[PlannedRun]:
    """The lr-selection runs: every grid value for each (setting, arm), first seed, largest fraction."""
    if cfg.lr_grid is None:
        return []
    pool = pool_size(cfg, n_available)
    return [_plan_one(cfg, pool, pretrained_init, setting=setting, init=init, fraction=cfg.fractions[-1],
                      seed=cfg.seeds[0], lr=lr, folder=SELECT_DIR, suffix=f"-lr{lr:g}")
            for setting in cfg.settings for init in cfg.inits for lr in cfg.lr_grid]


def plan_runs(cfg: CompareConfig, n_available: int, pretrained_init: str,
              lrs: dict | None = None) -> list[PlannedRun]:
    """Every run, seed-major: after the first seed the report already has one point per (init, fraction).

    `lrs` maps (setting, arm) to the chosen peak lr (default: base.lr for both). With a grid, the run of the first
    seed at the largest fraction is the selection run of the chosen lr (same data, seed and lr), reused as it is.
    """
    pool = pool_size(cfg, n_available)
    runs = []
    for seed in cfg.seeds:
        for setting in cfg.settings:
            for fraction in cfg.fractions:
                for noise in cfg.label_noise:
                    for init in cfg.inits:
                        # longer schedules for the scratch arm, on clean labels only
                        for epochs_x in cfg.scratch_epochs if init == "random" and not noise else (1,):
                            lr = (lrs or {}).get((setting, init), cfg.base.lr)
                            reused = lrs is not None and is_selection_point(cfg, seed, fraction) and not noise \
                                and epochs_x == 1
                            runs.append(_plan_one(cfg, pool, pretrained_init, setting=setting, init=init,
                                                  fraction=fraction, seed=seed, lr=lr,
                                                  folder=SELECT_DIR if reused else RUNS_DIR,
                                                  suffix=f"-lr{lr:g}" if reused else "", epochs_x=epochs_x,
                                                  noise=noise))
    return runs


def is_selection_point(cfg: CompareConfig, seed: int, fraction: float) -> bool:
    """True for the (seed, fraction) whose clean runs at the preset's schedule the lr selection already trains
    (first seed, largest fraction)."""
    return cfg.lr_grid is not None and seed == cfg.seeds[0] and fraction == cfg.fractions[-1]


def is_selection_run(cfg: CompareConfig, run: PlannedRun) -> bool:
    """True for a final run that is one of the lr-selection runs (trained with them, reused as it is)."""
    return is_selection_point(cfg, run.seed, run.fraction) and run.core


def choose_lrs(cfg: CompareConfig, selection: list[PlannedRun]) -> tuple[dict, dict]:
    """Each (setting, arm)'s peak lr: the grid value with the best final validation accuracy (ties: the smaller).

    Returns (lrs for plan_runs, the record for results.json: per setting name, per arm grid / val_acc / chosen).
    """
    lrs, record = {}, {}
    for setting in cfg.settings:
        for init in cfg.inits:
            runs = [r for r in selection if r.key == (setting, init)]
            val = [read_summary(r.run_dir)["val_acc"] for r in runs]
            best = max(range(len(runs)), key=lambda i: (val[i], -i))
            lrs[setting, init] = cfg.lr_grid[best]
            record.setdefault(setting_name(setting), {})[init] = {
                "grid": list(cfg.lr_grid), "val_acc": val, "chosen": cfg.lr_grid[best], "seed": runs[0].seed,
                "fraction": runs[0].fraction, "n_val": runs[0].cfg.train_limit - runs[0].n_train,
                "runs": [str(Path(SELECT_DIR) / r.name) for r in runs]}
    return lrs, record


# ---------------------------------------------------------------------------------------------- report directory
