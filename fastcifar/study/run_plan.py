"""The runs of a compare: one ordinary run directory per (init, fraction, seed[, setting]) under `<out>/runs/`, the
lr-selection runs under `<out>/lr-select/` (first seed, largest fraction, one per grid value), and each arm's lr
chosen from them on the validation split. Both arms of a point share every option and the same images."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from fastcifar.config import COMPARE_INITS, CompareConfig, TrainConfig, fit_batch, setting_name
from fastcifar.errors import FastCifarError
from fastcifar.rundir import TENSORBOARD_DIR, read_summary

RUNS_DIR, SELECT_DIR = "runs", "lr-select"


@dataclass(frozen=True)
class PlannedRun:
    name: str  # <init>-f<fraction>-s<seed>
    init: str  # the arm: imagenet | random
    fraction: float
    seed: int
    cfg: TrainConfig
    n_train: int  # training images after the validation split
    setting: tuple[int, str] = (32, "cifar")  # (image size, stem)

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.out)

    @property
    def key(self) -> tuple[tuple[int, str], str]:
        """(setting, arm): what an lr choice applies to."""
        return self.setting, self.init


def run_name(init: str, fraction: float, seed: int, setting: tuple[int, str] | None = None) -> str:
    return f"{init}-f{fraction:g}-s{seed}" + (f"-{setting_name(setting)}" if setting else "")


def _plan_one(cfg: CompareConfig, pool: int, pretrained_init: str, *, setting: tuple[int, str], init: str,
              fraction: float, seed: int, lr: float, folder: str, suffix: str = "") -> PlannedRun:
    """One run of the experiment: the shared recipe with this point's data, seed, setting, arm and lr."""
    base = cfg.base
    limit = round(fraction * pool)
    if limit < 10:
        raise FastCifarError(f"--fractions {fraction:g} of {pool} training images is {limit} images; a run needs "
                             "at least 10")
    n_train = limit - int(round(limit * base.val_fraction))  # as fastcifar.train.build.split_train_val
    batch, run_lr = fit_batch(base.batch_size, lr, n_train, base.min_steps_per_epoch)
    name = run_name(init, fraction, seed, setting if len(cfg.settings) > 1 else None) + suffix
    # With --tensorboard every run logs under the report, named arm/fraction/seed[/setting][/lrX for an lr-selection
    # run], so one `tensorboard --logdir REPORT/tensorboard` overlays both arms, all seeds and fractions.
    tb_parts = [init, f"f{fraction:g}", f"s{seed}"] + ([setting_name(setting)] if len(cfg.settings) > 1 else [])
    run_cfg = replace(base, init=pretrained_init if init == "imagenet" else "random", seed=seed, train_limit=limit,
                      batch_size=batch, lr=run_lr, image_size=setting[0], stem=setting[1],
                      backbone_lr_scale=base.backbone_lr_scale if init == "imagenet" else 1.0,
                      out=str(Path(cfg.out) / folder / name),
                      tensorboard_dir=str(Path(cfg.out, TENSORBOARD_DIR, *tb_parts, suffix.strip("-") or ""))
                      if base.tensorboard else None)
    return PlannedRun(name=name, init=init, fraction=fraction, seed=seed, cfg=run_cfg, n_train=n_train,
                      setting=setting)


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
            for setting in cfg.settings for init in COMPARE_INITS for lr in cfg.lr_grid]


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
                for init in COMPARE_INITS:
                    lr = (lrs or {}).get((setting, init), cfg.base.lr)
                    reused = lrs is not None and is_selection_point(cfg, seed, fraction)
                    runs.append(_plan_one(cfg, pool, pretrained_init, setting=setting, init=init, fraction=fraction,
                                          seed=seed, lr=lr, folder=SELECT_DIR if reused else RUNS_DIR,
                                          suffix=f"-lr{lr:g}" if reused else ""))
    return runs


def is_selection_point(cfg: CompareConfig, seed: int, fraction: float) -> bool:
    """True for the (seed, fraction) whose runs the lr selection already trains (first seed, largest fraction)."""
    return cfg.lr_grid is not None and seed == cfg.seeds[0] and fraction == cfg.fractions[-1]


def choose_lrs(cfg: CompareConfig, selection: list[PlannedRun]) -> tuple[dict, dict]:
    """Each (setting, arm)'s peak lr: the grid value with the best final validation accuracy (ties: the smaller).

    Returns (lrs for plan_runs, the record for results.json: per setting name, per arm grid / val_acc / chosen).
    """
    lrs, record = {}, {}
    for setting in cfg.settings:
        for init in COMPARE_INITS:
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
