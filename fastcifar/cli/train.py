"""`fastcifar train`: a preset plus the training options -> one run directory (fastcifar/train/loop.py), or
`--resume` of an interrupted one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from fastcifar.cli.options import (auto_preset, data_dir_option, download_option, given_options, json_option,
                                   preset_option, train_params)
from fastcifar.errors import FastCifarError

PRESET_HELP = ("Budget and recipe: seed = the original 10-epoch study, fast = best time-to-accuracy on a GPU, smoke = "
               "a few CPU minutes; auto = seed on a GPU, smoke on a CPU. Options given override it.")


@click.command(params=[preset_option(PRESET_HELP), *train_params()])
@data_dir_option
@download_option
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run directory to create (must not exist or be empty). [default: runs/<arch>-<init>-<time>]")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path), default=None,
              help="Continue an interrupted run directory exactly where its last finished epoch left off, with the "
                   "options it was started with (give no other training option beside it).")
@click.option("--keep-state/--no-keep-state", default=False, show_default=True,
              help="Keep state.pt (optimizer, RNG; ~90 MB for ResNet-18) in a finished run. Serving and reports "
                   "never need it; an unfinished run always keeps it to resume.")
@json_option
def train(preset: str, data_dir: Path | None, download: bool, out: Path | None, resume_dir: Path | None,
          keep_state: bool, as_json: bool, **overrides) -> None:
    """Train a ResNet on CIFAR-10 into a run directory (model.safetensors, metrics, summary).

    \b
    Examples:
      fastcifar train --data-dir ~/data/cifar10 --preset smoke --device cpu
      fastcifar train --init imagenet --stem imagenet --image-size 64 --preset seed
      fastcifar train --arch efficientnet_lite0 --init imagenet --preset smoke   # real ImageNet weights, offline
      torchrun --nproc-per-node 2 -m fastcifar train --preset fast
      fastcifar train --resume runs/resnet18-random-20261124-101500
    """
    # **overrides: the train_params options, each a TrainConfig field (None: not given, the preset decides).
    from fastcifar.config import make_train_config
    from fastcifar.train.loop import resume, train as run_training

    progress = "bar" if sys.stderr.isatty() else "lines"  # a log file gets one plain line per epoch
    if resume_dir is not None:
        given = given_options(exclude=("resume_dir", "as_json", "keep_state"))
        if given:
            raise FastCifarError(f"--resume continues {resume_dir} with the options it was started with; drop "
                                 f"{', '.join(given)} (or start a new run with --out)")
        result = resume(resume_dir, progress=progress, keep_state=keep_state)
    else:
        overrides.update(data_dir=str(data_dir) if data_dir else None, download=download,
                         out=str(out) if out else None)
        cfg = make_train_config(auto_preset(preset, overrides.get("device")), overrides)
        result = run_training(cfg, progress=progress, keep_state=keep_state)
    if not result.summary:  # non-zero ranks under torchrun
        return
    if as_json:
        click.echo(json.dumps({"run_dir": str(result.run_dir), **result.summary}))
    else:
        s = result.summary
        click.echo(f"{result.run_dir}: test acc {100 * s['test_acc']:.2f} %"
                   + (f", val acc {100 * s['val_acc']:.2f} %" if s.get("val_acc") is not None else "")
                   + f", {s['train_seconds']:.1f} s training, {s['images_per_second']:,.0f} img/s")
