"""The options several verbs share: data directory, download, --json, device, backend, serving precision, checkpoint,
the MODEL argument, and the training options of `train` and `compare` (one click option per TrainConfig field).

Choices come from the library's constant modules, none of which imports torch, so --help stays fast.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import click

from fastcifar.config import COMPILE_MODES, PRESET_NAMES, PRESETS, SCHEDULES, TrainConfig
from fastcifar.data.datasets import DATASETS
from fastcifar.data.loaders import LOADER_KINDS
from fastcifar.models import ARCHS, STEMS
from fastcifar.precision import SERVING_PRECISIONS, TRAIN_PRECISIONS
from fastcifar.serve.predictor import BACKENDS

DATASET_HELP = ("auto: an image folder when --data-dir holds train/<class>/ folders or (no train/) class folders of "
                "images, CIFAR-100 when it holds cifar-100-python/ (and no CIFAR-10), else CIFAR-10.")


def data_dir_option(func):
    return click.option(
        "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
        help="Directory holding CIFAR-10 (cifar-10-batches-py/, the batch files, or cifar-10-python.tar.gz), "
             "CIFAR-100 (cifar-100-python/ or its archive) or your own images (<class>/*, or train/<class>/* "
             "optionally with val/ and test/). [default: $FASTCIFAR_DATA, else ~/.cache/fastcifar]")(func)


def download_option(func):
    return click.option(
        "--download/--no-download", default=True, show_default=True,
        help="Download the official archive (md5-verified) when CIFAR-10 is not found.")(func)


def json_option(func):
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")(func)


def device_option(func):
    return click.option("--device", default="auto", show_default=True,
                        help="auto (CUDA when present) | cpu | cuda | cuda:N.")(func)


def backend_option(help: str):
    """--backend: which runtime runs the model (serve/predictor.py's BACKENDS, or auto: the file's own)."""
    return click.option("--backend", type=click.Choice(("auto", *BACKENDS)), default="auto", show_default=True,
                        help=help)


# --precision means what it says first: the training autocast (train, compare: train_params), the serving cast
# (predict, bench, evaluate, demo: here) or the exported graph's type (export).
def serving_precision_option(which: str = "the torch / torch-compiled backends"):
    return click.option(
        "--precision", type=click.Choice(SERVING_PRECISIONS), default=None,
        help=f"Serving cast: what {which} compute in at inference (the model is cast; fp32 is the parity reference; "
             "not the training autocast). An .onnx file or engine runs at the precision it was exported with "
             "(export --precision). [default: bf16 on CUDA, fp32 on the CPU]")


def checkpoint_option(func):
    return click.option("--checkpoint", type=click.Choice(("final", "best")), default="final", show_default=True,
                        help="Which weights of a run directory: the final model, or the best-validation epoch's "
                             "(best.safetensors; the same as giving RUN/best.safetensors).")(func)


def model_argument(func):
    """MODEL, positional: a run directory, model.safetensors, .onnx file or TensorRT engine."""
    return click.argument("model", type=click.Path(path_type=Path))(func)


def given_options(names=None, exclude=()) -> list[str]:
    """The running command's options typed on the command line (not defaults), as their flags (`--batch-sizes`),
    among `names` (default: every option) minus `exclude`: for the option combinations a verb refuses."""
    ctx = click.get_current_context()
    return [param.opts[0] for param in ctx.command.params
            if isinstance(param, click.Option) and (names is None or param.name in names) and param.name not in exclude
            and ctx.get_parameter_source(param.name) == click.core.ParameterSource.COMMANDLINE]


def usage_error(message: str) -> click.UsageError:
    return click.UsageError(message, ctx=click.get_current_context(silent=True))


# ---------------------------------------------------------------------------------------------- train, compare


def preset_option(help: str) -> click.Option:
    return click.Option(["--preset"], type=click.Choice(("auto", *PRESET_NAMES)), default="auto", show_default=True,
                        help=help)


def auto_preset(preset: str, device: str | None) -> str:
    """'auto' -> seed on a GPU, smoke on a CPU (where the 10-epoch study would take hours)."""
    if preset != "auto":
        return preset
    import torch

    on_gpu = (device or "auto") != "cpu" and torch.cuda.is_available()
    if not on_gpu:
        click.secho("No GPU: using the CPU-sized 'smoke' preset (pass --preset seed for the full 10-epoch run).",
                    fg="yellow", err=True)
    return "seed" if on_gpu else "smoke"


_FIELD_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}
_NONE_WORDS = {"train_limit": "all", "ema": "off"}  # what a None default means, per option


def preset_defaults(name: str) -> str:
    """'[default: X; smoke: Y]' for a TrainConfig field, from TrainConfig and the presets (never stale)."""
    def word(value):
        if isinstance(value, bool):
            return "on" if value else "off"
        return _NONE_WORDS.get(name, "none") if value is None else str(value)

    base = _FIELD_DEFAULTS[name]
    per_preset = [f"{p}: {word(v[name])}" for p, v in PRESETS.items() if name in v and v[name] != base]
    return "[default: " + "; ".join([word(base)] + per_preset) + "]"


def _train_option(*decls: str, help: str, defaults: bool = True, **kwargs) -> click.Option:
    """An option whose name is a TrainConfig field; None (the default) leaves the field to the preset. Its help
    ends with the per-preset defaults unless `defaults` is False (then the help says them)."""
    option = click.Option(decls, help=help, **kwargs)
    if defaults:
        option.help = f"{help} {preset_defaults(option.name)}"
    return option


def train_params(exclude: tuple[str, ...] = ()) -> list[click.Option]:
    """The training options of train and compare (each sets the TrainConfig field of its name), minus `exclude`."""
    options = [
        _train_option("--arch", type=click.Choice(ARCHS),
                      help="torchvision ResNet, or EfficientNet-Lite0 (timm; real ImageNet weights installed with "
                           "fastcifar)."),
        _train_option("--init", help="random | imagenet (ResNets: torchvision IMAGENET1K_V1, downloaded/cached by "
                                     "torchvision; efficientnet_lite0: the installed weights package, no network) | "
                                     "path to a state dict of the arch (.pth/.pt/.safetensors)."),
        _train_option("--stem", type=click.Choice(STEMS),
                      help="cifar: 3x3/1 conv, no max-pool; imagenet: torchvision's 7x7/2 conv + max-pool "
                           "(efficientnet_lite0: its own stem, the only one it has)."),
        _train_option("--image-size", type=int,
                      help="Train/eval resolution (32-512; images are resized on the device; efficientnet_lite0: "
                           "64 in every preset)."),
        _train_option("--dataset", type=click.Choice(DATASETS), help=DATASET_HELP),
        _train_option("--loader", type=click.Choice(LOADER_KINDS),
                      help="Data loader: DALI pipeline, pure-torch tensor loader, or auto (the tensor loader); both "
                           "train on the decoded images. dali-files (image folders only): DALI reads and decodes "
                           "the files every epoch (nvJPEG on CUDA) with random-resized-crop and flip."),
        _train_option("--val-fraction", type=float, help="Fraction of the training images held out for validation."),
        _train_option("--flip/--no-flip", default=None,
                      help="Random horizontal flips in training. Switch them off for data that is not "
                           "mirror-symmetric (digits, text, signs, left/right anatomy); flip TTA then follows."),
        _train_option("--crop-padding", type=int, help="Random crop of the image zero-padded by this many pixels "
                                                       "(0 = no crop; tensor and dali loaders)."),
        _train_option("--crop-scale", type=float, help="Smallest area fraction of dali-files' random-resized crop."),
        _train_option("--train-limit", type=int, help="Train on the first N training images only."),
        _train_option("--epochs", type=int, help="Training epochs."),
        _train_option("--batch-size", type=int,
                      help="Training batch: images per optimizer step, global (split across torchrun ranks). Not "
                           "bench's --batch-sizes (inference batches timed) nor export's --batch (TensorRT profile)."),
        _train_option("--lr", type=float, help="Peak learning rate (SGD Nesterov, warm-up then decay to 0)."),
        _train_option("--weight-decay", type=float, help="Weight decay (not on BatchNorm weights or biases)."),
        _train_option("--label-smoothing", type=float, help="Label smoothing of the cross-entropy loss."),
        _train_option("--warmup-epochs", type=float, help="Linear learning-rate warm-up length in epochs."),
        _train_option("--min-steps-per-epoch", type=int,
                      help="On small data the batch shrinks (lr scaled with it) until an epoch has this many steps. "
                           "0 = keep the batch."),
        _train_option("--schedule", type=click.Choice(SCHEDULES), help="Decay after warm-up."),
        _train_option("--lr-floor", type=float,
                      help="The schedule ends at this fraction of the peak lr instead of 0."),
        _train_option("--ema", type=float,
                      help="EMA decay per step for the evaluated and saved weights; it averages over ~1/(1-decay) "
                           "steps (0.99: ~100), so keep it well under a run's length."),
        _train_option("--ema-every", type=int, help="Steps between EMA updates (each uses decay^N: same horizon, 1/N "
                                                    "the work, no host sync)."),
        _train_option("--ema-start-epochs", type=float,
                      help="Epoch at which the EMA starts (its first update copies)."),
        _train_option("--whiten-stem/--no-whiten-stem", default=None,
                      help="First conv = frozen whitening filters of the training set's patches (random init only)."),
        _train_option("--bn-freeze-scales/--no-bn-freeze-scales", default=None,
                      help="Freeze every BatchNorm scale at its initial value."),
        _train_option("--bn-bias-lr-scale", type=float, help="Learning-rate multiplier for BatchNorm biases."),
        _train_option("--alternating-flip/--no-alternating-flip", default=None,
                      help="Flip each image on alternate epochs instead of at random."),
        _train_option("--zero-init-residual/--no-zero-init-residual", default=None,
                      help="Zero the last BatchNorm scale of each residual block (random init only)."),
        _train_option("--backbone-lr-scale", type=float,
                      help="Learning-rate multiplier for every layer but the classifier (< 1 fine-tunes a pretrained "
                           "backbone slower than the new head; compare applies it to the pretrained arm only)."),
        _train_option("--tta/--no-tta", default=None, defaults=False,
                      help="Horizontal-flip test-time augmentation at evaluation. [default: as --flip]"),
        _train_option("--tta-translate/--no-tta-translate", default=None,
                      help="Also average 1-px translated views at evaluation (outside the training clock)."),
        _train_option("--device", help="auto | cpu | cuda | cuda:N."),
        _train_option("--precision", type=click.Choice(TRAIN_PRECISIONS),
                      help="Training autocast: the precision the forward/backward passes compute in under "
                           "torch.autocast (weights stay fp32; not a serving or export setting); auto = bf16 on "
                           "CUDA, fp32 on the CPU (bench/README.md, Training throughput)."),
        _train_option("--channels-last/--no-channels-last", default=None, defaults=False,
                      help="channels_last memory format. [default: on for CUDA, off on CPU; on for "
                           "efficientnet_lite0]"),
        _train_option("--compile/--no-compile", default=None, defaults=False,
                      help="torch.compile the model. [default: on for CUDA, off on CPU]"),
        _train_option("--compile-mode", type=click.Choice(COMPILE_MODES), defaults=False,
                      help="torch.compile mode. [default: torch's]"),
        _train_option("--seed", type=int, help="Seed for init, split, shuffling and augmentation (>= 0)."),
        _train_option("--save-state-every", type=int,
                      help="Epochs between state.pt saves (the resume points; each is ~90 MB for a ResNet-18); 0 = "
                           "never (not resumable)."),
        _train_option("--save-best/--no-save-best", default=None,
                      help="Keep best.safetensors + best.json: the weights of the epoch with the best validation "
                           "accuracy (needs --val-fraction > 0; serve it with --checkpoint best)."),
        _train_option("--tensorboard/--no-tensorboard", default=None,
                      help="Write TensorBoard events (scalars per epoch, hparams, confusion matrix) into "
                           "RUN/tensorboard; compare: REPORT/tensorboard/ARM/FRACTION/SEED. Needs pip install "
                           "tensorboard."),
        _train_option("--linear-probe/--no-linear-probe", default=None,
                      help="Train only the classifier on the pretrained backbone's frozen features (BatchNorm in "
                           "eval mode), computed once per image and cached; needs --init imagenet or a weights file."),
        _train_option("--label-noise", type=click.FloatRange(0, 1, max_open=True),
                      help="Share of the training pool's labels (train and validation split, never the test set) "
                           "replaced by another class, uniformly at random, seeded by --seed."),
    ]
    return [option for option in options if option.name not in exclude]
