"""`fastcifar compare`: pretrained vs random init over seeds and training-set fractions -> a report directory
(fastcifar/study/compare.py). Takes train's options except --init: the two arms are the comparison."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import click

from fastcifar.cli.options import auto_preset, data_dir_option, download_option, preset_option, train_params
from fastcifar.config import COMPARE_DEFAULTS, COMPARE_LR_GRIDS, DEFAULT_ARMS, IF_NO_WEIGHTS, ROBUSTNESS_SEVERITIES
from fastcifar.models import ARCHS


def _numbers(values) -> str:
    return ",".join(str(v) for v in values)


def _compare_default(per_preset: dict[str, str]) -> str:
    """'[default: X; smoke: Y]': the value most presets share, then each preset that differs (config.py's tables)."""
    common = Counter(per_preset.values()).most_common(1)[0][0]
    return "[default: " + "; ".join([common] + [f"{p}: {v}" for p, v in per_preset.items() if v != common]) + "]"


def _lr_grid_default() -> str:
    """'[default: seed: 0.05,0.1,0.2; ...; none when --lr is given]' from COMPARE_LR_GRIDS."""
    grids = "; ".join(f"{preset}: {_numbers(grid)}" for preset, grid in COMPARE_LR_GRIDS.items())
    return f"[default: {grids}; none when --lr is given]"


PRESET_HELP = "Budget and recipe of every run (as for `train`): auto = seed on a GPU, smoke on a CPU."


# --init is left out: compare trains both inits itself (the weights come from --pretrained-weights).
@click.command(params=[preset_option(PRESET_HELP), *train_params(exclude=("init", "arch", "linear_probe",
                                                                                      "label_noise"))])
@click.option("--arch", type=click.Choice((*ARCHS, "auto")), default="resnet18", show_default=True,
              help="Network of both arms. efficientnet_lite0 has real ImageNet weights installed with fastcifar (no "
                   "network); auto = resnet18 where its ImageNet weights can be had and there is a GPU, else "
                   "efficientnet_lite0 (what make run uses).")
@data_dir_option
@download_option
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help="Seeds per (init, fraction): --seed, --seed+1, ... "
                   + _compare_default({p: str(seeds) for p, (seeds, _) in COMPARE_DEFAULTS.items()}))
@click.option("--fractions", default=None,
              help="Comma-separated fractions of the training images (of --train-limit when given) to train on. "
                   + _compare_default({p: _numbers(fractions) for p, (_, fractions) in COMPARE_DEFAULTS.items()}))
@click.option("--pretrained-weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="torchvision-format ImageNet state dict (.pth/.pt/.safetensors) for the pretrained arm, for "
                   "offline machines. [default: torchvision's IMAGENET1K_V1 download/cache]")
@click.option("--robustness-severities", default=",".join(map(str, ROBUSTNESS_SEVERITIES)), show_default=True,
              help="Corruption severities (1-5, e.g. 1,3,5 or 1-5) every final model is evaluated at for the "
                   "report's calibration and robustness sections, or none to skip that evaluation.")
@click.option("--if-no-weights", type=click.Choice(IF_NO_WEIGHTS), default="fail", show_default=True,
              help="When the ImageNet weights cannot be had: fail with a message, or run the pretrained arm from "
                   "stand-in random weights (a pipeline check, labelled as such in the report and the demo).")
@click.option("--lr-grid", default=None,
              help="Comma-separated peak learning rates: each arm (pretrained, random) trains once per value on the "
                   "first seed at the largest fraction and keeps the one with the best validation accuracy (the "
                   "test set plays no part); 'none' = one shared --lr for both arms. " + _lr_grid_default())
@click.option("--image-sizes", "image_sizes", default=None,
              help="Settings to compare, each its own table section: comma-separated sizes, each with its stem "
                   "(32 -> CIFAR stem, larger -> ImageNet stem) or SIZE:STEM, e.g. 32,224 or 32:cifar,64:imagenet. "
                   "[default: the preset's (or --image-size/--stem) one setting]")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report directory. Rerunning with the same --out and options skips finished runs and resumes "
                   "an interrupted one. [default: reports/<arch>-<preset>-<fingerprint of the options>, so "
                   "rerunning the same command resumes]")
@click.option("--time-budget", type=float, default=0, show_default=True,
              help="Minutes the whole study may take here: the speed is measured on a few training steps first, "
                   "and the training pool (--train-limit) shrinks to fit (at least 1,000 images), saying so; 0 = "
                   "the study as asked, however long. A rerun keeps the first decision (REPORT/sizing.json).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run every training run and robustness evaluation as a Ray task: --ray alone starts a local Ray on "
                   "127.0.0.1 (all GPUs of this machine), --ray HOST:PORT joins a cluster started with `ray start`. "
                   "Needs the ray extra (pip install -e '.[ray]' in the checkout). [default: one run after another in "
                   "this process]")
@click.option("--gpus-per-run", type=click.FloatRange(min=0), default=None,
              help="GPUs each Ray task asks for (a fraction such as 0.25 packs small runs onto one GPU). [default: 1 "
                   "where there are GPUs, else 0]")
@click.option("--cpus-per-run", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="CPUs each Ray task asks for; also its torch threads.")
@click.option("--arms", default=",".join(DEFAULT_ARMS), show_default=True,
              help="Comma-separated arms: finetune (ImageNet weights, every layer trained), linear-probe (the "
                   "ImageNet backbone frozen, features cached, only a linear classifier trained), scratch (random "
                   "init). scratch is always one: every gap is measured against it.")
@click.option("--scratch-epochs", default="1", show_default=True,
              help="The scratch arm's schedules as multiples of the preset's epochs, e.g. 1,3: does random init "
                   "catch up with k times the compute? (the report plots accuracy against training time).")
@click.option("--label-noise", "label_noise", default="0", show_default=True,
              help="Label-noise levels, e.g. 0,0.2,0.4: every arm also trains with this share of the training "
                   "pool's labels replaced by another class (uniform, seeded per seed; the test set is clean).")
@click.option("--json", "as_json", is_flag=True, help="Print results.json instead of the summary. [default: off]")
def compare(preset: str, data_dir: Path | None, download: bool, seeds: int | None, fractions: str | None,
            pretrained_weights: Path | None, robustness_severities: str, if_no_weights: str, lr_grid: str | None,
            image_sizes: str | None, out: Path | None, time_budget: float, ray_address: str | None,
            gpus_per_run: float | None, cpus_per_run: float, arms: str, scratch_epochs: str, label_noise: str,
            as_json: bool, arch: str, **overrides) -> None:
    """Pretrained vs random init, same budget, over seeds and training-set fractions -> a report directory.

    Each arm's peak learning rate is chosen from --lr-grid on the validation split first (runs under
    <out>/lr-select/). Writes report.md, results.json, env.json, compare.json, pretrained.json, curves.png,
    data_efficiency.png, per_class.png, confusion.png, robustness.png, reliability.png (per setting with
    --image-sizes), one run directory per run under <out>/runs/ and, with --tensorboard, <out>/tensorboard/.

    \b
    Examples:
      fastcifar compare --data-dir ~/data/cifar10 --preset smoke --pretrained-weights resnet18-f37072fd.pth
      fastcifar compare --data-dir ~/data/cifar10 --arch efficientnet_lite0 --time-budget 15   # real weights, offline
      fastcifar compare --preset seed --seeds 5 --fractions 0.01,0.1,1.0 --out reports/seed5
      fastcifar compare --preset seed --image-sizes 32,224 --lr-grid 0.05,0.1,0.2 --backbone-lr-scale 0.1
      fastcifar compare --arch efficientnet_lite0 --arms finetune,linear-probe,scratch --scratch-epochs 1,3 \\
          --label-noise 0,0.2,0.4 --fractions 0.01,0.1,1.0 --train-limit 10000
      fastcifar compare --preset seed --ray                     # every GPU of this machine, one run per GPU
      fastcifar compare --preset seed --ray 10.0.0.5:6379 --gpus-per-run 0.5   # a Ray cluster
    """
    # **overrides: the train_params options, each a TrainConfig field (None: not given, the preset decides).
    from fastcifar.config import make_compare_config
    from fastcifar.study.compare import compare as run_compare
    from fastcifar.study.report import print_summary

    preset = auto_preset(preset, overrides.get("device"))
    if arch == "auto":
        from fastcifar.study.pretrained import auto_arch

        arch, why = auto_arch(str(pretrained_weights) if pretrained_weights else None, overrides.get("device"))
        click.echo(f"compare --arch auto: {arch} ({why})", err=True)
    overrides.update(arch=arch, data_dir=str(data_dir.resolve()) if data_dir else None, download=download)
    cfg = make_compare_config(preset, overrides, seeds=seeds, fractions=fractions, lr_grid=lr_grid,
                              image_sizes=image_sizes, if_no_weights=if_no_weights,
                              pretrained_weights=str(pretrained_weights.expanduser().resolve())
                              if pretrained_weights else None, out=str(out) if out else None,
                              robustness_severities=robustness_severities, time_budget_min=time_budget,
                              arms=arms, scratch_epochs=scratch_epochs, label_noise=label_noise)
    ray = None
    if ray_address is not None:
        from fastcifar.study.ray_runs import RayOptions

        ray = RayOptions(address=ray_address, gpus_per_run=gpus_per_run, cpus_per_run=cpus_per_run)
    elif gpus_per_run is not None or cpus_per_run != 1.0:
        raise click.UsageError("--gpus-per-run and --cpus-per-run size Ray tasks: add --ray")
    result = run_compare(cfg, progress=sys.stderr.isatty(), command=sys.argv, ray=ray)
    if as_json:
        click.echo(json.dumps(result.results))
    else:
        print_summary(result.results, result.files)
