"""The networks: `create_model(arch, init, stem)`, the `ModelSpec` every artifact carries, save/load.

Owns building torchvision resnet18/34/50 with an ImageNet or CIFAR stem, loading pretrained weights (torchvision's
IMAGENET1K_V1, or a local torchvision-format state dict; a pretrained 7x7 conv1 enters the CIFAR stem by area
resampling to 3x3), the choice between those and EfficientNet-Lite0 (models/efficientnet.py: its architecture and
packaged ImageNet weights), `model_name`, and the model files of a run directory (`model.safetensors` +
`model.json`). What a user sees: docs/training.md, "Models".
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fastcifar.data.cifar import CLASS_NAMES
from fastcifar.errors import FastCifarError
from fastcifar.models import efficientnet
from fastcifar.preprocess import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, NATIVE_SIZE, area_overlaps
from fastcifar.rundir import BEST_FILE, CONFIG_FILE, MODEL_FILE, MODEL_META, meta_path

RESNETS = ("resnet18", "resnet34", "resnet50")
ARCHS = (*RESNETS, efficientnet.ARCH)
# "cifar": a ResNet's 3x3/1 first conv without max-pool; "imagenet": the network's own ImageNet stem (the only one
# EfficientNet-Lite0 has).
STEMS = ("imagenet", "cifar")
CLASSIFIERS = ("fc", "classifier")  # the last layer's name: torchvision's ResNets, timm's EfficientNet
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = NATIVE_SIZE, 512  # images are only ever resized up from CIFAR's 32 px
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model and feed it: recorded in model.json and ONNX metadata."""

    arch: str
    stem: str
    init: str  # "random" | "imagenet" | "file"
    image_size: int = 32
    num_classes: int = 10
    mean: tuple[float, float, float] = CIFAR_MEAN  # 0-1 scale, RGB
    std: tuple[float, float, float] = CIFAR_STD
    class_names: tuple[str, ...] = CLASS_NAMES
    weights_source: str | None = None  # URL, package or file the pretrained weights came from
    weights_sha256: str | None = None  # of that file (None: torchvision's download, checked by its own hash)
    notes: tuple[str, ...] = field(default_factory=tuple)  # what was adapted/not loaded

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("mean", "std", "class_names", "notes"):
            if key in known and known[key] is not None:
                known[key] = tuple(known[key])
        return cls(**known)


def arch_problem(arch: str, stem: str, image_size: int, size_name: str = "image size") -> str | None:
    """What is wrong with this (arch, stem, image size), or None: one message each, for configs and model files.
    `size_name`: what the size is called in it - the option the user typed (--image-size, --image-sizes) for a
    config."""
    if arch not in ARCHS:
        return f"unknown arch '{arch}' (choose from {', '.join(ARCHS)})"
    if stem not in STEMS:
        return f"unknown stem '{stem}' (choose from {', '.join(STEMS)})"
    if arch == efficientnet.ARCH and stem != "imagenet":
        return (f"--stem {stem} is a ResNet stem (3x3/1 first conv, no max-pool); {arch} has only its own stem: leave "
                "out --stem (or give --stem imagenet)")
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        if arch == efficientnet.ARCH and image_size < MIN_IMAGE_SIZE:
            return (f"{size_name} {image_size} is too small for {arch}: it downsamples {efficientnet.DOWNSAMPLING}x, "
                    f"so it needs at least {efficientnet.DOWNSAMPLING} px (and CIFAR's images are {NATIVE_SIZE} px)")
        return f"{size_name} {image_size} is outside {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}"
    return None


def native_stem(arch: str, image_size: int) -> str:
    """The stem an (arch, size) gets when none is named: CIFAR's for a ResNet at the native 32 px, else ImageNet's."""
    return "cifar" if arch in RESNETS and image_size == NATIVE_SIZE else "imagenet"


def _check(arch: str, stem: str, image_size: int) -> None:
    problem = arch_problem(arch, stem, image_size)
    if problem:
        raise FastCifarError(problem)


def build_model(arch: str, stem: str, num_classes: int = 10, *, image_size: int = 32,
                zero_init_residual: bool = False):
    """An untrained network of any ARCHS entry (EfficientNet's padding is fixed for `image_size`)."""
    _check(arch, stem, image_size)
    if arch == efficientnet.ARCH:
        return efficientnet.build(num_classes, image_size)
    return build_resnet(arch, stem, num_classes, zero_init_residual=zero_init_residual)


def build_resnet(arch: str, stem: str, num_classes: int = 10, *, zero_init_residual: bool = False):
    """An untrained torchvision ResNet with the requested stem and classifier.

    `zero_init_residual` zeroes the last BatchNorm scale of every residual block, so each block starts as the
    identity (torchvision's switch; Goyal et al. 2017) - gentler first steps for a random init.
    """
    import torch.nn as nn
    import torchvision

    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes,
                                         zero_init_residual=zero_init_residual)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def imagenet_state_dict(arch: str, offline_option: str = "--init PATH") -> tuple[dict, str]:
    """torchvision's IMAGENET1K_V1 weights via its own download/cache (~/.cache/torch/hub/checkpoints).
    `offline_option`: the caller's option that takes the file instead (train's --init, compare's
    --pretrained-weights), which the failure names."""
    import torchvision

    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    try:
        # torch.hub announces the download on stdout; stdout belongs to --json output, so send it to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            return weights.get_state_dict(progress=True, check_hash=True), weights.url
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a bad hash is a RuntimeError
        raise FastCifarError(
            f"cannot get torchvision's ImageNet weights for {arch} from {weights.url} ({exc}). Offline, "
            f"download that file elsewhere and pass it with {offline_option}, or put it in torch's hub cache "
            f"(~/.cache/torch/hub/checkpoints/).") from None


def read_state_dict(path: Path) -> dict:
    """A torchvision-format state dict from .safetensors or a torch file (weights_only: no code runs)."""
    import torch

    if not path.is_file():
        raise FastCifarError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        # Not torch's message: it advises weights_only=False, which would run code from an untrusted file.
        raise FastCifarError(f"{path} is not a readable state dict: not a file of weights saved by torch.save or "
                             f"safetensors ({type(exc).__name__})") from None
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise FastCifarError(f"{path} does not hold a state dict of tensors")
    return {_strip_prefixes(k): v for k, v in sd.items()}


def _strip_prefixes(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def adapt_conv1_to_cifar(weight):
    """7x7 ImageNet conv1 kernel -> 3x3 CIFAR kernel by exact area resampling.

    Each 3x3 tap sums the 7x7 weights under its 7/3-wide cell (fractional overlaps weighted), so every
    filter keeps its spatial pattern at a coarser grain and exactly the same sum of weights, i.e. the same
    response to a flat image patch.
    """
    import torch

    a = area_overlaps(weight.shape[-1], 3).to(weight.dtype)
    return torch.einsum("ij,ocjk,lk->ocil", a, weight, a)


def load_pretrained(model, state_dict: dict, arch: str, stem: str) -> tuple[str, ...]:
    """Load every non-classifier tensor of `state_dict` into `model` (an `arch`); refuse if any does not fit.

    Returns notes saying what was adapted or skipped.
    """
    target = model.state_dict()
    if arch == efficientnet.ARCH:
        if efficientnet.looks_like_resnet(state_dict):
            raise FastCifarError(f"these weights are a ResNet's (conv1/layer1 keys), not {arch}'s: give an "
                                 f"{arch} state dict (EfficientNet-PyTorch or timm naming), or use its installed "
                                 "ImageNet weights (train: --init imagenet; compare: leave out --pretrained-weights)")
        state_dict, head = efficientnet.to_timm_keys(state_dict, model), "classifier."
    else:
        head = "fc."
    notes = []
    sd = {k: v for k, v in state_dict.items() if not k.startswith(head)}
    dropped = sorted(k for k in state_dict if k.startswith(head))
    if dropped:
        notes.append(f"classifier replaced for {target[head + 'weight'].shape[0]} classes (not loaded: "
                     f"{', '.join(dropped)})")
    if stem == "cifar" and "conv1.weight" in sd and sd["conv1.weight"].shape[-1] != 3:
        sd["conv1.weight"] = adapt_conv1_to_cifar(sd["conv1.weight"].float())
        notes.append("conv1 7x7/2 kernel area-resampled to 3x3/1 (sum-preserving) for the cifar stem; "
                     "max-pool dropped")
    problems = state_dict_problems({k: v for k, v in target.items() if not k.startswith(head)}, sd)
    if problems:
        hint = (f"Is it an {arch} state dict?" if arch == efficientnet.ARCH else
                "Is it a torchvision state dict of the same arch?")
        raise FastCifarError(f"pretrained weights do not fit this model - {problems}. {hint}")
    model.load_state_dict(sd, strict=False)
    return tuple(notes)


def state_dict_problems(target: dict, found: dict) -> str | None:
    """Which keys of `found` do not fit `target` (missing, unexpected, wrong shape; the first 5 of each), or None."""
    missing = sorted(k for k in target if k not in found)
    unexpected = sorted(k for k in found if k not in target)
    mismatched = sorted(k for k in found if k in target and tuple(found[k].shape) != tuple(target[k].shape))

    def show(keys):
        return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

    problems = [f"{name}: {show(keys)}" for name, keys in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)) if keys]
    return "; ".join(problems) or None


def init_weights(arch: str, init: str) -> tuple[dict, str, str, str | None] | None:
    """The weights `init` names for `arch`, read once: (state dict, source, kind, sha256 or None), or None for
    'random'. 'imagenet' is torchvision's IMAGENET1K_V1 (EfficientNet-Lite0: the installed package's file); anything
    else is a path to a state dict. A directory is refused naming the file in it to pass."""
    from fastcifar.fileio import file_digest

    if init == "random":
        return None
    if init == "imagenet" and arch == efficientnet.ARCH:
        path, source = efficientnet.packaged_weights()  # installed with fastcifar: no network
        return read_state_dict(path), source, "imagenet", file_digest(path)
    if init == "imagenet":
        return (*imagenet_state_dict(arch), "imagenet", None)
    path = Path(init).expanduser()
    if path.is_dir():  # a run directory, as `ls runs/` shows it: its model is the file inside
        files = [path / name for name in (MODEL_FILE, BEST_FILE) if (path / name).is_file()]
        if files:
            best = f" (or {files[1]}, its best-validation epoch's weights)" if len(files) > 1 else ""
            raise FastCifarError(f"--init {init} is a run directory, not a weights file: pass its model, --init "
                                 f"{files[0]}{best}")
        raise FastCifarError(f"--init {init} is a directory, not a weights file: pass a state dict file "
                             f"(.pth/.pt/.safetensors), e.g. a finished run's {MODEL_FILE}")
    if not path.exists():
        raise FastCifarError(f"--init must be 'random', 'imagenet' or a weights file; '{init}' is none")
    return read_state_dict(path), str(path.resolve()), "file", file_digest(path)


def create_model(arch: str, init: str, stem: str, num_classes: int = 10, *, image_size: int = 32,
                 class_names: tuple[str, ...] = CLASS_NAMES, zero_init_residual: bool = False,
                 weights: tuple | None = None):
    """Build `arch` with `stem`; `init` is 'random', 'imagenet' or a path to a state dict of that arch (`weights`:
    what init_weights already read for it, so a caller that checked them early does not read them twice).

    Returns (model, spec). Pretrained inits normalise as their weights were trained (torchvision's ImageNet statistics;
    [-1, 1] for EfficientNet-Lite0), random init with CIFAR-10's. `zero_init_residual` only shapes a random ResNet:
    pretrained weights replace every BatchNorm scale.
    """
    model = build_model(arch, stem, num_classes, image_size=image_size,
                        zero_init_residual=zero_init_residual and init == "random" and arch in RESNETS)
    if init == "random":
        return model, ModelSpec(arch=arch, stem=stem, init="random", image_size=image_size,
                                num_classes=num_classes, class_names=tuple(class_names))
    state_dict, source, kind, sha = weights if weights is not None else init_weights(arch, init)
    notes = load_pretrained(model, state_dict, arch, stem)
    mean, std = (efficientnet.MEAN, efficientnet.STD) if arch == efficientnet.ARCH else (IMAGENET_MEAN, IMAGENET_STD)
    return model, ModelSpec(arch=arch, stem=stem, init=kind, image_size=image_size, num_classes=num_classes,
                            mean=mean, std=std, class_names=tuple(class_names),
                            weights_source=source, weights_sha256=sha, notes=notes)


# ---------------------------------------------------------------------------------------------- model files


def weights_and_meta(model, spec: ModelSpec, *, metrics: dict | None = None,
                     extra: dict | None = None) -> tuple[dict, dict]:
    """(the uncompiled module's weights on the CPU, model.json's content): what a saved model is."""
    module = getattr(model, "module", model)  # DDP wrapper
    state = {_strip_prefixes(k): v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    return state, {"format_version": FORMAT_VERSION, **spec.to_dict(), "metrics": metrics or {}, **(extra or {})}


def save_model(model, spec: ModelSpec, out_dir: Path | str, *, metrics: dict | None = None,
               extra: dict | None = None, checkpoint: str = "final") -> Path:
    """model.safetensors + model.json (best.* for checkpoint "best") in `out_dir`, written by its RunDir."""
    from fastcifar.rundir import RunDir

    return RunDir(out_dir).save_weights(*weights_and_meta(model, spec, metrics=metrics, extra=extra), checkpoint)


def resolve_model_files(path: Path | str) -> tuple[Path, Path]:
    """(weights, meta) for a run directory or a .safetensors path (best.safetensors: best.json beside it)."""
    path = Path(path).expanduser()
    if path.is_dir():
        weights, meta = path / MODEL_FILE, path / MODEL_META
    else:
        weights, meta = path, meta_path(path)
    if not weights.is_file():
        if path.is_dir() and (path / CONFIG_FILE).is_file():  # a run directory that has not finished
            raise FastCifarError(f"{path} is an unfinished run (no {MODEL_FILE} yet): continue it with "
                                 f"fastcifar train --resume {path}")
        raise FastCifarError(f"no model at {path}: expected a run directory holding {MODEL_FILE} or a "
                             f"{MODEL_FILE} file")
    if not meta.is_file():
        raise FastCifarError(f"{weights} has no {meta.name} beside it (it records arch, stem and normalisation)")
    return weights, meta


def model_name(path: Path | str) -> str:
    """The one name a model goes by in file names and on a server: its run directory's name ('-best' for the run's
    best.safetensors), an exported file's stem; characters other than letters, digits, '.', '_' and '-' become '-'
    (Triton's rule, and safe in any file system)."""
    import re

    path = Path(path).expanduser()
    if path.is_dir():
        stem = path.resolve().name
    elif path.suffix == ".safetensors":
        stem = path.resolve().parent.name + ("" if path.stem == Path(MODEL_FILE).stem else f"-{path.stem}")
    else:
        stem = path.stem
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "model"


def read_model_meta(path: Path | str) -> dict:
    """A saved model's record: model.json / best.json beside the weights, or the copy inside the weights file
    (rundir.RECORD_KEY, written with the weights by one rename) where that .json is damaged, or describes the same
    model but lags behind its weights (a kill between the two writes: another epoch's metrics). A .json of another
    model (another arch, say) stays the record, so load_model names the mismatch."""
    from fastcifar.rundir import weights_record

    weights, meta = resolve_model_files(path)
    inside = weights_record(weights)
    try:
        record = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        if inside is not None:
            return inside
        raise FastCifarError(f"{meta} is unreadable or not JSON ({exc})") from None
    if not isinstance(record, dict) or "arch" not in record:
        if inside is not None:
            return inside
        what = f"a JSON {type(record).__name__}" if not isinstance(record, dict) else "no arch in it"
        raise FastCifarError(f"{meta} is damaged ({what}): it does not describe {weights.name}; restore it from a "
                             "copy, or train the model again")
    if inside is not None and inside != record and all(
            inside.get(key) == record.get(key) for key in ModelSpec.__dataclass_fields__):
        return inside
    return record


def load_model(path: Path | str, device="cpu"):
    """Rebuild a saved model in eval mode. Returns (model, spec, meta) where meta is model.json's content."""
    from safetensors.torch import load_file

    weights, meta_file = resolve_model_files(path)
    meta = read_model_meta(path)
    try:
        spec = ModelSpec.from_dict(meta)
        _check(spec.arch, spec.stem, spec.image_size)
    except (TypeError, FastCifarError) as exc:
        raise FastCifarError(f"{meta_file} does not describe a fastcifar model ({exc})") from None
    model = build_model(spec.arch, spec.stem, spec.num_classes, image_size=spec.image_size)
    try:
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign file
        raise FastCifarError(f"{weights} cannot be read as safetensors ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    problems = state_dict_problems(model.state_dict(), state)
    if problems:  # e.g. a resnet34 file beside a resnet18 model.json: name the keys, not just the first line
        raise FastCifarError(f"{weights} does not hold a {spec.arch} ({spec.stem} stem) as its {MODEL_META} says - "
                             f"{problems}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), spec, meta
