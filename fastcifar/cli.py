"""The `fastcifar` command line: one thin click command per verb, each turning options into one library call.

Heavy imports (torch, DALI, ONNX, Gradio) happen inside the commands so `fastcifar --help` and
`--version` stay instant. User mistakes arrive as `FastCifarError` and leave as one line on stderr with a
non-zero exit code; nothing here prints a traceback for them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from fastcifar import __version__
# The option choices come from the library's own constants (none of these modules imports torch: --help stays fast).
from fastcifar.config import (COMPARE_DEFAULTS, COMPARE_LR_GRIDS, COMPILE_MODES, IF_NO_WEIGHTS, PRESET_NAMES,
                              ROBUSTNESS_SEVERITIES, SCHEDULES, parse_counts)
from fastcifar.data.datasets import DATASET_TITLES, DATASETS
from fastcifar.data.loaders import LOADER_KINDS
from fastcifar.errors import FastCifarError
from fastcifar.models import ARCHS, STEMS
from fastcifar.preprocess import INPUT_KINDS
from fastcifar.precision import DEFAULT_ENGINE_PROFILE, EXPORT_PRECISIONS, SERVING_PRECISIONS, TRAIN_PRECISIONS
from fastcifar.serve.predictor import BACKENDS

_BACKEND_CHOICES = ("auto", *BACKENDS)


class _Group(click.Group):
    """Turns FastCifarError, a filesystem error on a path the user gave, and Ctrl-C into one line and an exit code.

    An OSError that reaches here is a path that cannot be read or written (a directory under a file, /proc, no
    permission, a full disk): its message names the path and the reason. FASTCIFAR_DEBUG=1 shows the traceback.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FastCifarError as exc:
            click.secho(f"Error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)
        except OSError as exc:
            if os.environ.get("FASTCIFAR_DEBUG"):
                raise
            where = exc.filename if exc.filename is not None else "a file"
            click.secho(f"Error: cannot use {where}: {exc.strerror or exc}", fg="red", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.secho("Interrupted.", fg="yellow", err=True)
            ctx.exit(130)


def data_dir_option(func):
    return click.option(
        "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
        help="Directory holding CIFAR-10 (cifar-10-batches-py/, the batch files, or cifar-10-python.tar.gz), "
             "CIFAR-100 (cifar-100-python/ or its archive) or your own images (train/<class>/*, optionally val/ "
             "and test/). [default: $FASTCIFAR_DATA, else ~/.cache/fastcifar]")(func)


DATASET_HELP = ("auto: an image folder when --data-dir holds train/<class>/ folders, CIFAR-100 when it holds "
                "cifar-100-python/ (and no CIFAR-10), else CIFAR-10.")


def download_option(func):
    return click.option(
        "--download/--no-download", default=True, show_default=True,
        help="Download the official archive (md5-verified) when CIFAR-10 is not found.")(func)


def json_option(func):
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")(func)


# --precision means what it says first: training autocast (train, compare), the serving cast (predict, bench,
# evaluate, demo) or the exported graph's type (export).
def serving_precision_option(which: str = "the torch / torch-compiled backends"):
    """--precision as predict, evaluate, bench and demo mean it: the serving cast (fastcifar/precision.py)."""
    return click.option(
        "--precision", type=click.Choice(SERVING_PRECISIONS), default=None,
        help=f"Serving cast: what {which} compute in at inference (the model is cast; fp32 is the parity reference; "
             "not the training autocast). An .onnx file or engine runs at the precision it was exported with "
             "(export --precision). [default: bf16 on CUDA, fp32 on the CPU (measured fastest on each)]")


def checkpoint_option(func):
    """--checkpoint final|best: which weights of a run directory (final: model.safetensors; best: best.safetensors,
    the epoch with the best validation accuracy). RUN/best.safetensors given as the model does the same."""
    return click.option("--checkpoint", type=click.Choice(("final", "best")), default="final", show_default=True,
                        help="Which weights of a run directory: the final model, or the best-validation epoch's "
                             "(best.safetensors; the same as giving RUN/best.safetensors).")(func)


def _checkpoint(path: Path, checkpoint: str) -> Path:
    from fastcifar.rundir import checkpoint_file

    return checkpoint_file(path, checkpoint)


def backend_option(help: str):
    """--backend: which runtime runs the model (serve/predictor.py's BACKENDS, or auto: the file's own)."""
    return click.option("--backend", type=click.Choice(_BACKEND_CHOICES), default="auto", show_default=True,
                        help=help)


def device_option(func):
    return click.option("--device", default="auto", show_default=True,
                        help="auto (CUDA when present) | cpu | cuda | cuda:N.")(func)

# ---------------------------------------------------------------------------------------------- the model
# Every verb that takes one model takes it as MODEL or as --model (the same path either way, given once); bench
# takes one or more, all in one form. predict's arguments are [MODEL] IMAGE...: without --model the first is the
# model, with --model they are all images.

MODEL_WORDS = "a run directory, model.safetensors, .onnx file or TensorRT engine"


def model_argument(func):
    return click.argument("model", required=False, type=click.Path(path_type=Path))(func)


def model_option(func):
    return click.option("--model", "model_option", type=click.Path(path_type=Path), default=None,
                        help="MODEL as an option (the same path; give it one way or the other, once).")(func)


def _same_path(a: Path, b: Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _given_options(names=None, exclude=()) -> list[str]:
    """The running command's options the user typed on the command line (not defaults), as their flags
    (`--batch-sizes`), among `names` (default: every option) minus `exclude`: for the option combinations a verb
    refuses."""
    ctx = click.get_current_context()
    return [param.opts[0] for param in ctx.command.params
            if isinstance(param, click.Option) and (names is None or param.name in names) and param.name not in exclude
            and ctx.get_parameter_source(param.name) == click.core.ParameterSource.COMMANDLINE]


def _usage_error(message: str) -> click.UsageError:
    return click.UsageError(message, ctx=click.get_current_context(silent=True))


def _one_model(verb: str, positional: Path | None, option: Path | None) -> Path:
    """The model given as MODEL or --model; a usage error when it is missing or given both ways."""
    if positional is not None and option is not None:
        if _same_path(positional, option):
            raise _usage_error(f"the model is given twice (MODEL {positional} and --model {option}): give it once, "
                               "as MODEL or with --model")
        raise _usage_error(f"two models given (MODEL {positional} and --model {option}): {verb} takes one; give "
                           "it once, as MODEL or with --model")
    if positional is None and option is None:
        raise _usage_error(f"Missing MODEL: give it as MODEL or with --model, e.g. fastcifar {verb} runs/r18")
    return positional if positional is not None else option


def _models(positional: tuple[Path, ...], options: tuple[Path, ...]) -> tuple[Path, ...]:
    """bench's models: MODEL... or --model (repeatable), one form only."""
    if positional and options:
        if len(positional) == len(options) and all(_same_path(a, b) for a, b in zip(positional, options)):
            raise _usage_error(f"the model is given twice (MODEL {' '.join(map(str, positional))} and --model "
                               f"{' --model '.join(map(str, options))}): give the models once, as MODEL... or "
                               "with --model")
        raise _usage_error(f"models given both as MODEL ({' '.join(map(str, positional))}) and with --model "
                           f"({', '.join(map(str, options))}): give them all one way, as MODEL... or with --model "
                           "(repeated)")
    if not positional and not options:
        raise _usage_error(f"Missing MODEL ({MODEL_WORDS}): give one or more as MODEL... or with --model, e.g. "
                           "fastcifar bench runs/r18")
    return positional or options


def _is_model_path(path: Path) -> bool:
    """A run directory (finished or not) or a model file, by what is on disk: predict's guard against a model
    taken for an image folder."""
    from fastcifar.rundir import looks_like_run_dir
    from fastcifar.serve.artifacts import ENGINE_SUFFIXES

    if path.is_dir():
        return looks_like_run_dir(path)
    return path.suffix.lower() in (".safetensors", ".onnx", *ENGINE_SUFFIXES)


def _predict_inputs(paths: tuple[Path, ...], option: Path | None) -> tuple[Path, tuple[Path, ...]]:
    """(model, images) from predict's [MODEL] IMAGE... and --model."""
    forms = "fastcifar predict MODEL IMAGE... or fastcifar predict IMAGE... --model MODEL"
    if option is not None:
        model, images = option, paths
    elif not paths:
        raise _usage_error(f"Missing MODEL and IMAGE: {forms}")
    else:
        model, images = paths[0], paths[1:]
        if model.exists() and not _is_model_path(model):
            raise _usage_error(f"{model} is not a model ({MODEL_WORDS}): without --model the first argument is the "
                               f"model - {forms}")
    for path in images:
        if _same_path(path, model):
            raise _usage_error(f"the model {model} is given twice" + (" (as --model and as an argument)" if option
                               is not None else "") + f": give it once - {forms}")
        if _is_model_path(path):
            raise _usage_error(f"{path} is a model, and {model} is the model already: predict takes one model - "
                               f"{forms}")
    if not images:
        raise _usage_error(f"Missing IMAGE: give at least one image file or folder after the model - {forms}")
    return model, images


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="fastcifar")
def cli() -> None:
    """ImageNet-pretrained vs from-scratch ResNets on CIFAR-10: train, compare, export, serve - fast."""


@cli.command()
@data_dir_option
@click.option("--dataset", type=click.Choice(DATASETS), default="auto", show_default=True, help=DATASET_HELP)
@download_option
@json_option
def data(data_dir: Path | None, dataset: str, download: bool, as_json: bool) -> None:
    """Find (or download) the dataset, verify it and print split sizes, class counts and channel mean/std; for an
    image folder also the images' original sizes, where the test split comes from and what is skipped and why.

    \b
    Examples:
      fastcifar data --data-dir ../shared/cifar10 --json
      fastcifar data --dataset cifar100 --data-dir ~/data
      fastcifar data --data-dir ~/photos          # ~/photos/train/<class>/*.jpg (optionally val/, test/)
    """
    from fastcifar.data.cifar import split_stats
    from fastcifar.data.datasets import load_dataset

    progress = not as_json and sys.stderr.isatty()
    loaded = load_dataset(data_dir, dataset, download=download, progress=progress)
    n = len(loaded.class_names)
    info = loaded.info
    stats = {"root": str(loaded.root), "dataset": info.get("dataset", "cifar10"),
             "class_names": list(loaded.class_names), "train": split_stats(loaded.train, n),
             "test": split_stats(loaded.test, n), "test_source": info.get("test_source"),
             "skipped": info.get("skipped") or {}, "skipped_summary": info.get("skipped_summary"),
             "notes": info.get("notes") or []}
    if stats["dataset"] == "folder":
        from fastcifar.data.folder import original_size_stats

        stats.update(storage_size=info.get("storage_size"), cache=info.get("cache"),
                     original_sizes=original_size_stats(loaded.root))
    if as_json:
        click.echo(json.dumps(stats))
        return
    _print_data_stats(stats)


def _print_data_stats(stats: dict) -> None:
    from rich.table import Table

    from fastcifar.runtime import table_console

    table = Table(title=f"{DATASET_TITLES.get(stats['dataset'], stats['dataset'])} in {stats['root']}")
    table.add_column("class")
    table.add_column("train", justify="right")
    table.add_column("test", justify="right")
    for i, name in enumerate(stats["class_names"]):
        table.add_row(f"{i} {name}", str(stats["train"]["per_class"][i]), str(stats["test"]["per_class"][i]))
    table.add_section()
    table.add_row("total", str(stats["train"]["count"]), str(stats["test"]["count"]), style="bold")
    for key in ("mean", "std"):
        table.add_row(f"{key} (R,G,B; 0-255)", *(", ".join(f"{v:.2f}" for v in stats[s][key])
                                                 for s in ("train", "test")))
    table_console().print(table)
    if stats.get("original_sizes"):
        sizes = stats["original_sizes"]
        click.echo(f"original sizes: {sizes['count']} images, width {sizes['width']['min']}-{sizes['width']['max']} "
                   f"(median {sizes['width']['median']}), height {sizes['height']['min']}-{sizes['height']['max']} "
                   f"(median {sizes['height']['median']}); stored at {stats['storage_size']} px in {stats['cache']}")
    if stats.get("test_source") and stats["dataset"] == "folder":
        click.echo(f"test split: {stats['test_source']}")
    for line in ([stats["skipped_summary"]] if stats.get("skipped_summary") else []) + list(stats.get("notes") or []):
        click.echo(line)


# ---------------------------------------------------------------------------------------------- train


_NONE_WORDS = {"train_limit": "all", "ema": "off"}  # what a None default means, per option


def _default(name: str) -> str:
    """'[default: X; smoke: Y]' from TrainConfig and the presets, so --help never lies about defaults."""
    from dataclasses import fields

    from fastcifar.config import PRESETS, TrainConfig

    def word(value):
        if isinstance(value, bool):
            return "on" if value else "off"
        return _NONE_WORDS.get(name, "none") if value is None else str(value)

    base = {f.name: f.default for f in fields(TrainConfig)}[name]
    per_preset = [f"{p}: {word(v[name])}" for p, v in PRESETS.items() if name in v and v[name] != base]
    return "[default: " + "; ".join([word(base)] + per_preset) + "]"


# (option declarations, TrainConfig field) - shared by `train` and `compare`.
_TRAIN_OPTIONS = [
    (("--arch",), dict(type=click.Choice(ARCHS), help="torchvision ResNet.")),
    (("--init",), dict(help="random | imagenet (torchvision IMAGENET1K_V1, downloaded/cached by torchvision) | "
                            "path to a torchvision-format state dict (.pth/.pt/.safetensors).")),
    (("--stem",), dict(type=click.Choice(STEMS),
                       help="cifar: 3x3/1 conv, no max-pool; imagenet: torchvision's 7x7/2 conv + max-pool.")),
    (("--image-size",), dict(type=int, help="Train/eval resolution (32-512; images are resized on the device).")),
    (("--dataset",), dict(type=click.Choice(DATASETS), help=DATASET_HELP)),
    (("--loader",), dict(type=click.Choice(LOADER_KINDS),
                         help="Data loader: DALI pipeline, pure-torch tensor loader, or auto (the tensor loader "
                              "everywhere: the path measured on a GPU; DALI's GPU pipeline is not yet); both train on "
                              "the decoded images. dali-files (image folders only): DALI reads and decodes the files "
                              "every epoch (nvJPEG on CUDA) with random-resized-crop and flip.")),
    (("--val-fraction",), dict(type=float, help="Fraction of the training images held out for validation.")),
    (("--flip/--no-flip",), dict(default=None, help="Random horizontal flips in training. Switch them off for data "
                                                    "that is not mirror-symmetric (digits, text, signs, left/right "
                                                    "anatomy); flip TTA then follows.")),
    (("--crop-padding",), dict(type=int, help="Random crop of the image zero-padded by this many pixels (0 = no "
                                              "crop; tensor and dali loaders).")),
    (("--crop-scale",), dict(type=float, help="Smallest area fraction of dali-files' random-resized crop.")),
    (("--train-limit",), dict(type=int, help="Train on the first N training images only.")),
    (("--epochs",), dict(type=int, help="Training epochs.")),
    (("--batch-size",), dict(type=int, help="Training batch: images per optimizer step, global (split across "
                                            "torchrun ranks). Not bench's --batch-sizes (inference batches timed) "
                                            "nor export's --batch (TensorRT profile).")),
    (("--lr",), dict(type=float, help="Peak learning rate (SGD Nesterov, warm-up then decay to 0).")),
    (("--weight-decay",), dict(type=float, help="Weight decay (not on BatchNorm weights or biases).")),
    (("--label-smoothing",), dict(type=float, help="Label smoothing of the cross-entropy loss.")),
    (("--warmup-epochs",), dict(type=float, help="Linear learning-rate warm-up length in epochs.")),
    (("--min-steps-per-epoch",), dict(type=int, help="On small data the batch shrinks (lr scaled with it) until an "
                                                     "epoch has this many steps. 0 = keep the batch.")),
    (("--schedule",), dict(type=click.Choice(SCHEDULES), help="Decay after warm-up.")),
    (("--lr-floor",), dict(type=float, help="The schedule ends at this fraction of the peak lr instead of 0 "
                                            "(airbench94: 0.07). Not yet measured on a GPU.")),
    (("--ema",), dict(type=float, help="EMA decay per step for the evaluated and saved weights; it averages over "
                                       "~1/(1-decay) steps (0.99: ~100), so keep it well under a run's length.")),
    (("--ema-every",), dict(type=int, help="Steps between EMA updates (each uses decay^N: same horizon, 1/N the "
                                           "work, no host sync).")),
    (("--ema-start-epochs",), dict(type=float, help="Epoch at which the EMA starts (its first update copies).")),
    (("--whiten-stem/--no-whiten-stem",),
     dict(default=None, help="First conv = frozen whitening filters of the training set's patches (airbench94; "
                             "random init only). Not yet measured on a GPU.")),
    (("--bn-freeze-scales/--no-bn-freeze-scales",),
     dict(default=None, help="Freeze every BatchNorm scale at its initial value (airbench94, Page). Not yet "
                             "measured on a GPU.")),
    (("--bn-bias-lr-scale",), dict(type=float, help="Learning-rate multiplier for BatchNorm biases (airbench94: "
                                                    "64, with frozen scales). Not yet measured on a GPU.")),
    (("--alternating-flip/--no-alternating-flip",),
     dict(default=None, help="Flip each image on alternate epochs instead of at random (airbench94). Not yet "
                             "measured on a GPU.")),
    (("--zero-init-residual/--no-zero-init-residual",),
     dict(default=None, help="Zero the last BatchNorm scale of each residual block (random init only).")),
    (("--backbone-lr-scale",), dict(type=float, help="Learning-rate multiplier for every layer but the classifier "
                                                     "(< 1 fine-tunes a pretrained backbone slower than the new "
                                                     "head; compare applies it to the pretrained arm only).")),
    (("--tta/--no-tta",), dict(default=None, help="Horizontal-flip test-time augmentation at evaluation. "
                                                  "[default: as --flip]")),
    (("--tta-translate/--no-tta-translate",),
     dict(default=None, help="Also average 1-px translated views at evaluation (airbench94's level 2; outside "
                             "the training clock). Not yet measured on a GPU.")),
    (("--device",), dict(help="auto | cpu | cuda | cuda:N.")),
    (("--precision",), dict(type=click.Choice(TRAIN_PRECISIONS),
                            help="Training autocast: the precision the forward/backward passes compute in under "
                                 "torch.autocast (weights stay fp32; not a serving or export setting); auto = bf16 "
                                 "on CUDA, fp32 on CPU (bf16 measured slower there: 0.86x with AMX, ~7x slower "
                                 "without).")),
    (("--channels-last/--no-channels-last",), dict(default=None, help="channels_last memory format. "
                                                                     "[default: on for CUDA, off on CPU]")),
    (("--compile/--no-compile",), dict(default=None, help="torch.compile the model. [default: on for CUDA, off "
                                                          "on CPU]")),
    (("--compile-mode",), dict(type=click.Choice(COMPILE_MODES),
                               help="torch.compile mode. [default: torch's]")),
    (("--seed",), dict(type=int, help="Seed for init, split, shuffling and augmentation (>= 0).")),
    (("--save-state-every",), dict(type=int, help="Epochs between state.pt saves (the resume points; each is "
                                                  "~90 MB for a ResNet-18); 0 = never (not resumable).")),
    (("--save-best/--no-save-best",), dict(default=None, help="Keep best.safetensors + best.json: the weights of "
                                                             "the epoch with the best validation accuracy (needs "
                                                             "--val-fraction > 0; serve it with --checkpoint best).")),
    (("--tensorboard/--no-tensorboard",), dict(default=None, help="Write TensorBoard events (scalars per epoch, "
                                                                 "hparams, confusion matrix) into RUN/tensorboard; "
                                                                 "compare: REPORT/tensorboard/ARM/FRACTION/SEED. "
                                                                 "Needs pip install tensorboard.")),
]
_NO_DEFAULT_TEXT = {"channels_last", "compile", "compile_mode", "tta"}  # device- or flip-dependent: their help says


def train_options(func):
    for decls, kwargs in reversed(_TRAIN_OPTIONS):
        name = decls[0].split("/")[0].lstrip("-").replace("-", "_")
        kwargs = dict(kwargs)
        if name not in _NO_DEFAULT_TEXT:
            kwargs["help"] = f"{kwargs['help']} {_default(name)}"
        func = click.option(*decls, **kwargs)(func)
    return func


def _train_overrides(options: dict) -> dict:
    return {k: v for k, v in options.items() if k in {f.split("/")[0].lstrip("-").replace("-", "_")
                                                        for d, _ in _TRAIN_OPTIONS for f in d}}


def _auto_preset(preset: str, device: str | None) -> str:
    """'auto' -> seed on a GPU, smoke on a CPU (where the 10-epoch study would take hours)."""
    if preset != "auto":
        return preset
    import torch

    on_gpu = (device or "auto") != "cpu" and torch.cuda.is_available()
    chosen = "seed" if on_gpu else "smoke"
    if not on_gpu:
        click.secho("No GPU: using the CPU-sized 'smoke' preset (pass --preset seed for the full 10-epoch run).",
                    fg="yellow", err=True)
    return chosen


@cli.command()
@click.option("--preset", type=click.Choice(("auto", *PRESET_NAMES)), default="auto", show_default=True,
              help="Budget and recipe: seed = the original 10-epoch study, fast = best time-to-accuracy on a GPU, "
                   "smoke = a few CPU minutes; auto = seed on a GPU, smoke on a CPU. Options given override it.")
@train_options
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
def train(preset: str, data_dir, download: bool, out, resume_dir, keep_state: bool, as_json: bool,
          **options) -> None:
    """Train a ResNet on CIFAR-10 into a run directory (model.safetensors, metrics, summary).

    \b
    Examples:
      fastcifar train --data-dir ../shared/cifar10 --preset smoke --device cpu
      fastcifar train --init imagenet --stem imagenet --image-size 64 --preset seed
      torchrun --nproc-per-node 2 -m fastcifar train --preset fast
      fastcifar train --resume runs/resnet18-random-20261124-101500
    """
    from fastcifar.config import make_train_config
    from fastcifar.train.loop import resume, train as run_training

    progress = "bar" if sys.stderr.isatty() else "lines"  # a log file gets one plain line per epoch
    if resume_dir is not None:
        given = _given_options(exclude=("resume_dir", "as_json", "keep_state"))
        if given:
            raise FastCifarError(f"--resume continues {resume_dir} with the options it was started with; drop "
                                 f"{', '.join(given)} (or start a new run with --out)")
        result = resume(resume_dir, progress=progress, keep_state=keep_state)
    else:
        overrides = _train_overrides(options)
        overrides.update(data_dir=str(data_dir) if data_dir else None, download=download,
                         out=str(out) if out else None)
        cfg = make_train_config(_auto_preset(preset, options.get("device")), overrides)
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


# ---------------------------------------------------------------------------------------------- compare


def _numbers(values) -> str:
    return ",".join(str(v) for v in values)


def _compare_default(per_preset: dict[str, str]) -> str:
    """'[default: X; smoke: Y]': the value most presets share, then each preset that differs (from config.py's
    tables, like `_default`, so compare --help never goes stale)."""
    from collections import Counter

    common = Counter(per_preset.values()).most_common(1)[0][0]
    return "[default: " + "; ".join([common] + [f"{p}: {v}" for p, v in per_preset.items() if v != common]) + "]"


def _lr_grid_default() -> str:
    """'[default: seed: 0.05,0.1,0.2; ...; none when --lr is given]' from COMPARE_LR_GRIDS."""
    grids = "; ".join(f"{preset}: {_numbers(grid)}" for preset, grid in COMPARE_LR_GRIDS.items())
    return f"[default: {grids}; none when --lr is given]"


@cli.command()
@click.option("--preset", type=click.Choice(("auto", *PRESET_NAMES)), default="auto", show_default=True,
              help="Budget and recipe of every run (as for `train`): auto = seed on a GPU, smoke on a CPU.")
@train_options
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
@click.option("--json", "as_json", is_flag=True, help="Print results.json instead of the summary. [default: off]")
def compare(preset: str, data_dir, download: bool, seeds, fractions, pretrained_weights, if_no_weights, lr_grid,
            image_sizes, out, as_json: bool, robustness_severities: str, time_budget: float, **options) -> None:
    """Pretrained vs random init, same budget, over seeds and training-set fractions -> a report directory.

    Each arm's peak learning rate is chosen from --lr-grid on the validation split first (runs under
    <out>/lr-select/). Writes report.md, results.json, env.json, compare.json, pretrained.json, curves.png,
    data_efficiency.png, per_class.png, confusion.png, robustness.png, reliability.png (per setting with
    --image-sizes), one run directory per run under <out>/runs/ and, with --tensorboard, <out>/tensorboard/.

    \b
    Examples:
      fastcifar compare --data-dir ../shared/cifar10 --preset smoke --pretrained-weights resnet18-f37072fd.pth
      fastcifar compare --preset seed --seeds 5 --fractions 0.01,0.1,1.0 --out reports/seed5
      fastcifar compare --preset seed --image-sizes 32,224 --lr-grid 0.05,0.1,0.2 --backbone-lr-scale 0.1
    """
    from fastcifar.config import make_compare_config
    from fastcifar.study.compare import compare as run_compare
    from fastcifar.study.report import print_summary

    preset = _auto_preset(preset, options.get("device"))
    overrides = {**_train_overrides(options), "data_dir": str(data_dir.resolve()) if data_dir else None,
                 "download": download}
    cfg = make_compare_config(preset, overrides, seeds=seeds, fractions=fractions, lr_grid=lr_grid,
                              image_sizes=image_sizes, if_no_weights=if_no_weights,
                              pretrained_weights=str(pretrained_weights.expanduser().resolve())
                              if pretrained_weights else None, out=str(out) if out else None,
                              robustness_severities=robustness_severities, time_budget_min=time_budget)
    result = run_compare(cfg, progress=sys.stderr.isatty(), command=sys.argv)
    if as_json:
        click.echo(json.dumps(result.results))
    else:
        print_summary(result.results, result.files)


# compare trains both inits itself: --init would only contradict it (the weights come from --pretrained-weights).
compare.params = [p for p in compare.params if p.name != "init"]


@cli.command()
@click.option("--pretrained", required=True, type=click.Path(path_type=Path),
              help="The ImageNet-pretrained model: a run directory, model.safetensors, .onnx or TensorRT engine.")
@click.option("--scratch", required=True, type=click.Path(path_type=Path),
              help="The from-scratch model, in any of the same forms.")
@backend_option("Inference backend for both models; auto picks the one that runs the given file.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Use 0.0.0.0 only to make the demo reachable from other machines.")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True, help="Port to serve on.")
@click.option("--share/--no-share", default=False, show_default=True,
              help="Ask Gradio for a temporary public *.gradio.live link (needs internet).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="CIFAR-10 directory for the example gallery (never downloaded here). [default: the models' "
                   "recorded data dir, else $FASTCIFAR_DATA, else ~/.cache/fastcifar; no CIFAR gallery if none]")
@click.option("--examples", "examples_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A folder of your own images to add to the gallery. [default: none]")
@serving_precision_option()
@checkpoint_option
def demo(pretrained: Path, scratch: Path, backend: str, host: str, port: int, share: bool,
         data_dir: Path | None, examples_dir: Path | None, precision: str | None, checkpoint: str) -> None:
    """Serve a web page: one image in, ImageNet-pretrained and from-scratch top-10 side by side.

    Each model is named by what its run records: a "pretrained" run that `compare --if-no-weights stand-in`
    trained from stand-in random weights is titled and flagged as a stand-in, not ImageNet-pretrained.

    Example: fastcifar demo --pretrained runs/pretrained --scratch runs/scratch
    """
    import logging

    from fastcifar.serve.demo import serve

    logger = logging.getLogger("fastcifar")  # our notes only; Gradio/httpx keep their own (noisy) loggers quiet
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler())
    pretrained, scratch = _checkpoint(pretrained, checkpoint), _checkpoint(scratch, checkpoint)
    serve(pretrained, scratch, backend=backend, host=host, port=port, share=share, data_dir=data_dir,
          examples_dir=examples_dir, precision=precision)


@cli.command()
@model_argument
@model_option
@backend_option("Inference backend behind the server; auto runs the given file as it is (as for predict).")
@device_option
@serving_precision_option()
@checkpoint_option
@click.option("--name", default=None,
              help="The model's name on the server. [default: the run directory's name or the file's stem]")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address every endpoint binds. Use 0.0.0.0 only to serve other machines.")
@click.option("--http-port", type=int, default=8000, show_default=True, help="HTTP/REST (KServe v2) port.")
@click.option("--grpc-port", type=int, default=8001, show_default=True, help="gRPC (KServe v2) port.")
@click.option("--metrics-port", type=int, default=8002, show_default=True, help="Prometheus metrics port.")
@click.option("--max-batch", type=click.IntRange(min=1), default=256, show_default=True,
              help="Largest batch Triton forms from queued requests, and largest request it accepts.")
@click.option("--queue-delay-us", type=click.IntRange(min=0), default=None,
              help="How long Triton holds a request to batch it with others. [default: 100, as in the exported "
                   "repository's config]")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("exported/cache"),
              show_default=True, help="Cache of on-the-fly ONNX exports and TensorRT engines.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the ready line as one JSON object (model, urls, backend, precision, pid).")
def serve(model: Path | None, model_option: Path | None, backend: str, device: str, precision: str | None,
          checkpoint: str, name: str | None, host: str, http_port: int, grpc_port: int, metrics_port: int,
          max_batch: int, queue_delay_us: int | None, cache_dir: Path, as_json: bool) -> None:
    """Serve MODEL on a real NVIDIA Triton Inference Server (PyTriton): HTTP and gRPC (KServe v2), dynamic
    batching, Prometheus metrics. Needs the serve extra: pip install 'fastcifar[serve]'.

    The model takes what the exported repository's models take (fastcifar export --triton-repo): input `pixels`
    uint8 [N, S, S, 3] RGB, output `logits` float32 [N, classes]; its config carries the class names. The model
    is ready only after a warm-up batch. Ctrl-C or SIGTERM stops the server and its tritonserver process.

    \b
    Examples:
      fastcifar serve runs/resnet18-imagenet
      fastcifar serve exported/resnet18-imagenet.onnx --http-port 9000 --grpc-port 9001 --metrics-port 9002
      fastcifar predict cat.jpg --server localhost:8000 --model resnet18-imagenet
      fastcifar bench --server localhost:8000 --model resnet18-imagenet --concurrency 1,8,32
    """
    model = _checkpoint(_one_model("serve", model, model_option), checkpoint)
    from fastcifar.serve.triton_server import ServeConfig, ready_line, serve_model

    cfg = ServeConfig(model=str(model), backend=None if backend == "auto" else backend, device=device,
                      precision=precision, name=name, host=host, http_port=http_port, grpc_port=grpc_port,
                      metrics_port=metrics_port, max_batch=max_batch, queue_delay_us=queue_delay_us,
                      cache_dir=str(cache_dir))
    serve_model(cfg, on_ready=lambda info: click.echo(ready_line(info, as_json)),
                log=lambda message: click.echo(f"serve: {message}", err=True))
    click.echo("serve: stopped", err=True)


# ---------------------------------------------------------------------------------------------- predict / bench



@cli.command()
@click.argument("paths", metavar="[MODEL] IMAGE...", nargs=-1, type=click.Path(path_type=Path))
@click.option("--model", "model_option", type=click.Path(path_type=Path), default=None,
              help=f"The model ({MODEL_WORDS}); then every argument is an image. Without it the first argument is "
                   "the model.")
@backend_option("Inference backend; auto runs the given file as it is (run dir: torch, .onnx: onnxruntime, "
                "engine: tensorrt). A run dir with onnxruntime/tensorrt is exported on the fly (cached).")
@device_option
@serving_precision_option()
@click.option("--topk", type=click.IntRange(min=1), default=3, show_default=True, help="Labels shown per image.")
@click.option("--json", "as_json", is_flag=True,
              help='Print a JSON list [{"file", "top": [{"label", "prob"}], "backend", "precision"}] instead of a '
                   'table. [default: table]')
@checkpoint_option
@click.option("--server", default=None,
              help="Ask a Triton server instead of loading a model here: http://HOST:PORT, grpc://HOST:PORT or "
                   "HOST:PORT (fastcifar serve, or a Triton loading export --triton-repo). Then every argument is "
                   "an image and --model names the server's model (optional when it lists exactly one).")
def predict(paths: tuple[Path, ...], model_option: Path | None, backend: str, device: str, precision: str | None,
            topk: int, as_json: bool, checkpoint: str, server: str | None) -> None:
    """Classify image files (any format Pillow reads; directories are walked) with a trained model.

    The model comes first (MODEL IMAGE...) or with --model (IMAGE... --model MODEL: then every argument is an
    image), as for the other verbs. Unreadable files get a message on stderr and the others are still predicted;
    the exit code is 1 if any failed.

    \b
    Examples:
      fastcifar predict runs/resnet18-imagenet cat.jpg photos/
      fastcifar predict cat.jpg photos/ --model runs/resnet18-imagenet      # the same
      fastcifar predict *.png --model exported/resnet18-imagenet.onnx --topk 1 --json
      fastcifar predict cat.jpg --server localhost:8000 --model resnet18-imagenet   # a Triton server
    """
    from fastcifar.serve.predictor import load_predictor, predict_files

    if server is not None:
        predictor, images = _server_predictor(paths, model_option, server), paths
    else:
        model, images = _predict_inputs(paths, model_option)
        model = _checkpoint(model, checkpoint)
        predictor = load_predictor(model, None if backend == "auto" else backend, device, precision=precision)
    results, failures = predict_files(predictor, images, topk=topk)
    for item in results:  # every output says what ran
        item.update(backend=predictor.backend, precision=predictor.precision)
        if server is not None:
            item.update(server=str(predictor.url), model=predictor.name)
    for _, message in failures:
        click.secho(f"Error: {message}", fg="red", err=True)
    if as_json:
        click.echo(json.dumps(results))
    elif results:
        _print_predictions(results, f"{predictor.backend} {predictor.precision} on {predictor.device}")
    if failures:
        sys.exit(1)


def _server_predictor(paths: tuple[Path, ...], model_name, server: str):
    """predict --server: the options that choose a local model mean nothing there; a usage error names them."""
    local = _given_options(("backend", "device", "precision", "checkpoint"))
    if local:
        raise _usage_error(f"{', '.join(local)} choose a local model; with --server the server runs its own "
                           "(give them to fastcifar serve)")
    if not paths:
        raise _usage_error("Missing IMAGE: fastcifar predict IMAGE... --server URL [--model NAME]")
    from fastcifar.serve.triton_client import TritonPredictor

    return TritonPredictor(server, str(model_name) if model_name is not None else None)


def _print_predictions(results: list[dict], backend: str) -> None:
    from rich.table import Table

    from fastcifar.runtime import table_console

    table = Table(title=f"predictions ({backend})")
    table.add_column("file", overflow="fold")
    for i in range(len(results[0]["top"])):
        table.add_column(f"top {i + 1}")
    for item in results:
        table.add_row(item["file"], *(f"{t['label']} {t['prob']:.1%}" for t in item["top"]))
    table_console().print(table)


@cli.command()
@model_argument
@model_option
@backend_option("Inference backend; auto runs the given file as it is (as for predict).")
@device_option
@serving_precision_option()
@data_dir_option
@click.option("--corruptions", default="all", show_default=True,
              help="all | none | comma-separated names among: gaussian_noise, shot_noise, impulse_noise, "
                   "gaussian_blur, contrast, brightness, saturate, pixelate, jpeg_compression.")
@click.option("--severities", default="1-5", show_default=True, help="Severities 1-5, e.g. 1,3,5 or 1-5.")
@click.option("--cifar10c", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory of the official CIFAR-10-C files (<corruption>.npy + labels.npy): numbers comparable "
                   "with papers. [default: corruptions generated from the test images on the device]")
@click.option("--max-images", type=int, default=None, help="First N test images only. [default: all]")
@click.option("--plots", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for the reliability diagram (reliability.png). [default: none]")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated corruptions.")
@checkpoint_option
@json_option
def evaluate(model: Path | None, model_option: Path | None, backend: str, device: str, precision: str | None,
             data_dir: Path | None, corruptions: str, severities: str, cifar10c: Path | None, max_images: int | None,
             plots: Path | None, seed: int, checkpoint: str, as_json: bool) -> None:
    """Calibration and corruption robustness of MODEL on the CIFAR-10 test split (what pretraining buys beyond
    top-1): accuracy, NLL, Brier score, ECE (15 bins), reliability diagram; accuracy per corruption and severity
    (CIFAR-10-C's definitions), their mean and its ratio to clean accuracy. MODEL may also be given as --model.

    \b
    Examples:
      fastcifar evaluate runs/r18 --data-dir ../shared/cifar10 --corruptions all --severities 1,3,5 --json
      fastcifar evaluate --model runs/r18 --corruptions none                  # the same MODEL, as an option
      fastcifar evaluate exported/r18.onnx --corruptions gaussian_noise,contrast --plots reports/eval
      fastcifar evaluate runs/r18 --cifar10c ~/data/CIFAR-10-C
    """
    model = _checkpoint(_one_model("evaluate", model, model_option), checkpoint)
    from fastcifar.robustness import parse_corruptions, parse_severities
    from fastcifar.serve.evaluate_model import evaluate_model, print_evaluation

    result = evaluate_model(model, backend=None if backend == "auto" else backend, device=device, precision=precision,
                            data_dir=data_dir, corruptions=parse_corruptions(corruptions),
                            severities=parse_severities(severities), cifar10c=cifar10c, max_images=max_images,
                            plots=plots, seed=seed, log=lambda message: click.echo(f"evaluate: {message}", err=True))
    if as_json:
        click.echo(json.dumps(result))
    else:
        print_evaluation(result)


@cli.command()
@click.argument("model_args", metavar="[MODEL]...", nargs=-1, type=click.Path(path_type=Path))
@click.option("--model", "models", multiple=True, type=click.Path(path_type=Path),
              help=f"Model to measure ({MODEL_WORDS}), as an option; repeat for several. Or give them as "
                   "MODEL... (one form, not both).")
@click.option("--backends", default="torch,torch-compiled,onnxruntime,tensorrt", show_default=True,
              help="Comma-separated backends, each optionally with a precision for the torch ones (torch:fp32, "
                   "torch:bf16, torch-compiled:fp16) so one run sets them side by side; those that cannot run "
                   "here are listed as 'skipped: why'. The parity reference is always PyTorch fp32 eager.")
@click.option("--batch-sizes", default="1,64,256,1024", show_default=True,
              help="Inference batch sizes to time, comma-separated (images per forward call). Not train's "
                   "--batch-size (the training batch); a TensorRT engine skips sizes above the MAX of the profile "
                   "it was exported with (export --batch MIN:OPT:MAX).")
@data_dir_option
@click.option("--download/--no-download", default=False, show_default=True,
              help="Download CIFAR-10 when it is found neither in --data-dir nor where the run was trained from "
                   "(off: a benchmark measures, it does not fetch data unasked).")
@device_option
@serving_precision_option("the torch backends that name none in --backends")
@click.option("--max-images", type=click.IntRange(min=1), default=None,
              help="Score on the first N test images only. [default: all]")
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="PyTorch fp32 reference (run dir). [default: the model itself; for an .onnx, the run named "
                   "in its metadata when found here with the same weights]")
@click.option("--max-accuracy-drop", type=float, default=None,
              help="Parity gate: exit 1 when a backend's accuracy is more than this many percentage points below "
                   "the reference (or a backend fails). [default: no gate]")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("bench/results"),
              show_default=True, help="Where the JSON, markdown and PNG results go.")
@click.option("--save/--no-save", default=True, show_default=True, help="Write the result files.")
@click.option("--name", default=None, help="Result file name stem. [default: inference-<models>-<device>]")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("exported/cache"),
              show_default=True, help="Cache of on-the-fly ONNX exports and TensorRT engines.")
@click.option("--min-time", type=float, default=1.0, show_default=True, help="Seconds timed per batch size.")
@click.option("--warmup", type=float, default=0.5, show_default=True, help="Warm-up seconds per batch size.")
@click.option("--min-iters", type=click.IntRange(min=1), default=3, show_default=True,
              help="Fewest timed calls per batch size.")
@click.option("--latency-iters", type=click.IntRange(min=1), default=100, show_default=True,
              help="Fewest batch-1 calls for the latency percentiles.")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Timing rounds, round-robin over the backends; each figure is the best round (shared machines).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads per backend (torch and ONNX Runtime). [default: each runtime's own, one per core]")
@click.option("--json", "as_json", is_flag=True,
              help="Print the per-backend results as a JSON list instead of a table. [default: table]")
@click.option("--jsonl", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also append each result row to this file as one JSON line the moment the row is final (its "
                   "folder is created; an existing file is kept), so a bench killed by a time limit leaves every "
                   "row it finished. Each line names its model, label/backend, precision, device, batch_sizes and "
                   "machine. [default: off]")
@checkpoint_option
@click.option("--server", default=None,
              help="Load-test a Triton server on this machine instead (http://localhost:PORT or grpc://...): "
                   "concurrent clients, images/s, p50/p95/p99 latency, errors and the server's mean batch. Then "
                   "--model names the server's model and --batch-sizes are images per request [default there: 8].")
@click.option("--concurrency", default="1,8,32", show_default=True,
              help="With --server: numbers of concurrent clients, one level each.")
@click.option("--requests", type=click.IntRange(min=1), default=200, show_default=True,
              help="With --server: requests per level (each level also stops at --duration).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True,
              help="With --server: seconds per level at most.")
@click.option("--metrics-url", default=None,
              help="With --server: Triton's Prometheus endpoint. [default: http://HOST:8002/metrics]")
def bench(model_args, models, backends, batch_sizes, data_dir, download, device, precision, max_images, reference,
          max_accuracy_drop, results_dir, save, name, cache_dir, min_time, warmup, min_iters, latency_iters, repeats,
          threads, as_json, jsonl, checkpoint, server, concurrency, requests, duration, metrics_url) -> None:
    """Accuracy parity and speed of each inference backend; each backend runs alone in its own process.

    The models come as MODEL... or as --model (repeated), one form or the other.

    \b
    Examples:
      fastcifar bench runs/resnet18-imagenet --data-dir ../shared/cifar10
      fastcifar bench --model runs/resnet18-imagenet --data-dir ../shared/cifar10      # the same
      fastcifar bench runs/r18 --backends torch,onnxruntime --batch-sizes 1,256 --json
      fastcifar bench exported/r18.onnx --reference runs/r18 --max-accuracy-drop 0.1   # CI gate
      fastcifar bench --server localhost:8000 --model resnet18-imagenet --concurrency 1,8,32 --json
    """
    if server is not None:
        return _bench_server(server, model_args, models, batch_sizes, concurrency, requests, duration, metrics_url,
                             as_json)
    server_only = _given_options(("concurrency", "requests", "duration", "metrics_url"))
    if server_only:
        raise _usage_error(f"{', '.join(server_only)} belong to the load test of a server: add --server URL")
    models = tuple(_checkpoint(m, checkpoint) for m in _models(model_args, models))
    from fastcifar.bench.harness import BenchConfig, bench as run_bench, parse_backends, parse_batch_sizes

    cfg = BenchConfig(models=tuple(str(m) for m in models), backends=parse_backends(backends),
                      batch_sizes=parse_batch_sizes(batch_sizes), data_dir=str(data_dir) if data_dir else None,
                      download=download, device=device, max_images=max_images,
                      reference=str(reference) if reference else None, max_accuracy_drop=max_accuracy_drop,
                      results_dir=str(results_dir) if save else None, name=name, cache_dir=str(cache_dir),
                      warmup_s=warmup, min_time_s=min_time, min_iters=min_iters, latency_iters=latency_iters,
                      repeats=repeats, threads=threads, precision=precision, jsonl=str(jsonl) if jsonl else None)
    report = run_bench(cfg, log=lambda message: click.echo(f"bench: {message}", err=True))
    if as_json:
        click.echo(json.dumps(report.rows))
    else:
        from fastcifar.bench.tables import print_table

        print_table(report)
        for file in report.files:
            click.echo(f"wrote {file}")
    if not report.passed:
        raise FastCifarError("bench failed: " + "; ".join(report.failures))


def _bench_server(server, model_args, models, batch_sizes, concurrency, requests, duration, metrics_url,
                  as_json) -> None:
    """bench --server: the load test (fastcifar/bench/load_test.py)."""
    local = _given_options(exclude=("server", "concurrency", "requests", "duration", "metrics_url", "batch_sizes",
                                    "models", "model_args", "as_json"))
    if local:
        raise _usage_error(f"{', '.join(local)} apply to the in-process benchmark, not to --server")
    names = tuple(model_args) + tuple(models)
    if len(names) > 1:
        raise _usage_error("--server load-tests one model: give its name once with --model NAME")
    from fastcifar.bench.tables import print_load_table
    from fastcifar.bench.load_test import LoadConfig, load_test

    explicit = bool(_given_options(("batch_sizes",)))
    cfg = LoadConfig(server=server, model=str(names[0]) if names else None,
                     concurrency=parse_counts(concurrency, "--concurrency", sort=True),
                     batch_sizes=parse_counts(batch_sizes, "--batch-sizes", sort=True) if explicit else (8,),
                     requests=requests, duration_s=duration, metrics_url=metrics_url)
    result = load_test(cfg, log=lambda message: click.echo(f"bench: {message}", err=True))
    if as_json:
        click.echo(json.dumps(result))
    else:
        print_load_table(result)
    failed = sum(r["errors"] for r in result["rows"])
    if failed:
        raise FastCifarError(f"{failed} request(s) failed during the load test")


@cli.command()
@model_argument
@model_option
@click.option("--onnx/--no-onnx", default=True, show_default=True,
              help="Export the ONNX file. --no-onnx reuses the one already in --out (for --trt / INT8 only).")
@click.option("--trt", is_flag=True, default=False,
              help="Also build a TensorRT engine (needs TensorRT and an NVIDIA GPU). [default: off]")
@click.option("--precision", type=click.Choice(EXPORT_PRECISIONS), default="fp32", show_default=True,
              help="Exported graph type: the compute type written into the ONNX graph (the engine's precision "
                   "under TensorRT 11); not a training or serving setting (an exported file always runs at it). "
                   "I/O stay uint8/float32 in, float32 logits out.")
@click.option("--input", "input_kind", type=click.Choice(INPUT_KINDS), default="raw", show_default=True,
              help="raw: uint8 NHWC 32x32 pixels in, normalisation (and resize) inside the graph. "
                   "normalized: float32 NCHW at the model's image size, already normalised.")
@click.option("--opset", type=click.IntRange(min=18), default=None,
              help="ONNX opset. [default: 20; 22 for bf16]")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("exported"),
              show_default=True, help="Output directory (files are named after the run).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="CIFAR-10 for the parity check and INT8 calibration (never downloaded here). "
                   "[default: the data directory recorded in the run]")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Compare ONNX Runtime with the PyTorch model on test images; a mismatch fails the export.")
@click.option("--verify-images", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Test images for the parity check (0 = all).")
@click.option("--batch", default=DEFAULT_ENGINE_PROFILE, show_default=True,
              help="TensorRT optimisation profile MIN:OPT:MAX (or one size): the engine accepts batches of MIN to "
                   "MAX images and is tuned for OPT; used with --trt only. Not train's --batch-size (the training "
                   "batch) nor bench's --batch-sizes (the inference batches it times).")
@click.option("--workspace-gib", type=click.FloatRange(min=0.0, min_open=True), default=4.0, show_default=True,
              help="TensorRT builder workspace limit in GiB.")
@click.option("--int8-calib-images", type=click.IntRange(min=0), default=0, show_default=True,
              help="N > 0: also write an INT8 (Q/DQ) ONNX calibrated on N training images, and build the "
                   "engine from it with --trt. Needs --precision fp32.")
@click.option("--triton-repo", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write an NVIDIA Triton Inference Server model repository here: <name>_onnx/ (config.pbtxt, "
                   "labels.txt, 1/model.onnx) per ONNX file, and <name>_trt/ (1/model.plan) for the --trt engine. "
                   "Works with --input normalized too (the config then declares float32 NCHW at the model's image "
                   "size). An existing entry of another model is kept and the export fails. [default: none]")
@click.option("--triton-max-batch", type=click.IntRange(min=1), default=None,
              help="Triton max_batch_size. [default: the engine profile's MAX (--batch) for the TensorRT entry; "
                   f"{DEFAULT_ENGINE_PROFILE.split(':')[-1]}, the default profile's MAX, for ONNX entries]")
@click.option("--triton-instance-kind", type=click.Choice(("gpu", "cpu")), default="gpu", show_default=True,
              help="instance_group kind of the ONNX entries: gpu (KIND_GPU) needs a GPU in the Triton server; cpu "
                   "(KIND_CPU) for a CPU-only server. A TensorRT entry is always KIND_GPU.")
@checkpoint_option
@json_option
def export(model: Path | None, model_option: Path | None, onnx: bool, trt: bool, precision: str, input_kind: str,
           opset: int | None, out_dir: Path, data_dir: Path | None, verify: bool, verify_images: int, batch: str,
           workspace_gib: float, int8_calib_images: int, triton_repo: Path | None, triton_max_batch: int | None,
           triton_instance_kind: str, checkpoint: str, as_json: bool) -> None:
    """Export MODEL (a run directory or model.safetensors; an .onnx for --trt alone) to ONNX / TensorRT.

    Every ONNX file is checked with onnx.checker and compared with the PyTorch model in ONNX Runtime; the
    result is written beside it as <name>.parity.json. Without TensorRT or a GPU, --trt ends with a
    message saying what is missing; the ONNX files are still written.

    MODEL may also be given as --model.

    Example: fastcifar export runs/r18-imagenet --precision fp16 --trt --batch 1:128:512

    Triton: fastcifar export runs/r18-imagenet --trt --triton-repo triton-models
    """
    model = _checkpoint(_one_model("export", model, model_option), checkpoint)
    from fastcifar.export import export_model

    summary = export_model(model, onnx=onnx, trt=trt, precision=precision, input_kind=input_kind, opset=opset,
                           out_dir=out_dir, data_dir=data_dir, verify=verify, max_images=verify_images or None,
                           batch=batch, workspace_gib=workspace_gib, int8_calib_images=int8_calib_images,
                           triton_repo=triton_repo, triton_max_batch=triton_max_batch,
                           triton_instance_kind=triton_instance_kind,
                           log=lambda message: click.echo(f"export: {message}", err=True))
    if as_json:
        click.echo(json.dumps(summary.to_dict()))
    else:
        _print_export(summary)
        for entry in summary.triton:
            click.echo(f"triton: {entry.path} ({entry.platform}, max_batch_size {entry.max_batch_size})")
        if summary.triton:
            from fastcifar.export.triton import docker_command

            click.echo(f"serve it (needs Docker and an NVIDIA GPU): {docker_command(triton_repo)}")
    if summary.error:
        raise FastCifarError(summary.error)


def _print_export(summary) -> None:
    from rich import box
    from rich.table import Table

    from fastcifar.runtime import table_console

    console = table_console()
    if summary.onnx:
        table = Table(title=f"ONNX export -> {summary.onnx[0].path.parent}", box=box.SIMPLE_HEAD)
        table.add_column("file", no_wrap=True)
        for column in ("max |diff|", "agree", "test acc torch→onnx (no TTA)", "parity"):
            table.add_column(column, justify="right")
        for r in summary.onnx:
            p = r.parity
            cells = ([f"{p['max_abs_diff']:.3g}", f"{p['top1_agreement']:.3f}",
                      f"{100 * p['torch_accuracy']:.2f} %→{100 * p['onnx_accuracy']:.2f} %",
                      "ok" if p["passed"] else "FAILED"]
                     if p else ["-", "-", "-", "not checked"])
            table.add_row(r.path.name, *cells)
        console.print(table)
        for r in summary.onnx:
            line = f"{r.path.name}: {r.size_bytes / 1e6:.1f} MB, opset {r.opset}"
            if r.parity:
                line += (f"; parity on {r.parity['n_images']} test images with {r.parity['runtime']} -> "
                         f"{r.parity_path.name}" + (f" ({r.parity['emulated']})" if r.parity.get("emulated") else ""))
            console.print(line)
    if summary.engine:
        s = summary.engine["sidecar"]
        console.print(f"engine: {summary.engine['path']}  (TensorRT {s['tensorrt_version']}, {s['gpu_name']}, "
                      f"{s['precision']}, batch {s['profile']['min']}:{s['profile']['opt']}:{s['profile']['max']})")


# OpenMP's wait policy for every verb, set before torch loads OpenMP (an explicit OMP_WAIT_POLICY wins).
# Measured with bench/omp_wait_policy.py on this project's 2-core CPU (2026-11-28, bench/README.md): with one other
# busy process, training ran 1.8x faster with PASSIVE (307 vs 171 img/s) and batch-1 inference 1.7x faster (8.0 vs
# 13.3 ms); on the idle machine PASSIVE cost 4 % of training speed (610 vs 635) and batch-1 latency rose from 4.8 to
# 9.2 ms. The default policy's spin-waiting is what turned a 5-minute `make run` into 71 minutes on a shared machine,
# so the default guards against the collapse; OMP_WAIT_POLICY=ACTIVE restores spinning on a dedicated machine.
DEFAULT_OMP_WAIT_POLICY = "PASSIVE"


def main() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", DEFAULT_OMP_WAIT_POLICY)
    cli(prog_name="fastcifar")


if __name__ == "__main__":
    main()
