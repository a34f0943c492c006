"""Where compare's pretrained arm gets its weights: a file the user gives (checked against torchvision's published
IMAGENET1K_V1 hash), torchvision's download, or - with --if-no-weights stand-in, offline - random stand-in weights
saved in the report so the pipeline still runs (and every output says so). The first answer is kept in the report's
pretrained.json (rundir.PRETRAINED_FILE), so a rerun cannot switch sources halfway.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from fastcifar.config import CompareConfig
from fastcifar.errors import FastCifarError
from fastcifar.fileio import atomic_path, file_digest
from fastcifar.rundir import PRETRAINED_FILE

STAND_IN_FILE = "stand-in.pth"
STAND_IN_SEED = 1234


def _torchvision_hash_prefix(arch: str) -> str | None:
    """The sha256 prefix torchvision puts in its IMAGENET1K_V1 file name (e.g. resnet18-f37072fd.pth)."""
    import torchvision

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
    label = (f"torchvision IMAGENET1K_V1 weights from {path.name} (verified by sha256)" if verified else
             f"weights from {path.name} (sha256 {sha[:12]}; not torchvision's IMAGENET1K_V1 file)")
    return {"kind": "file", "init": str(path), "sha256": sha, "verified_imagenet": verified, "label": label}


def _from_torchvision(cfg: CompareConfig, out: Path) -> dict:
    from fastcifar.models import imagenet_state_dict

    _, url = imagenet_state_dict(cfg.base.arch)  # downloads into torch's hub cache once; hash-checked
    return {"kind": "torchvision", "init": "imagenet", "sha256": None, "verified_imagenet": True,
            "label": f"torchvision IMAGENET1K_V1 weights ({url})"}


def _stand_in(cfg: CompareConfig, out: Path, reason: str = "") -> dict:
    """Random torchvision-format weights saved in the report: lets the pipeline run without ImageNet weights."""
    import torch
    import torchvision

    path = out / STAND_IN_FILE
    if not path.is_file():
        torch.manual_seed(STAND_IN_SEED)
        with atomic_path(path) as tmp:
            torch.save(torchvision.models.get_model(cfg.base.arch, weights=None).state_dict(), tmp)
    return {"kind": "stand-in", "init": str(path.resolve()), "sha256": file_digest(path), "verified_imagenet": False,
            "label": "STAND-IN random weights (no ImageNet weights were available)", "reason": reason}


def resolve_pretrained(cfg: CompareConfig, out: Path) -> dict:
    """Where the pretrained arm's weights come from; the first invocation's answer is kept in pretrained.json."""
    from fastcifar.models import build_resnet, load_pretrained, read_state_dict

    record = out / PRETRAINED_FILE
    if record.is_file():
        source = json.loads(record.read_text())
        path = Path(source["init"])
        if source["sha256"] and (not path.is_file() or file_digest(path) != source["sha256"]):
            raise FastCifarError(f"the pretrained weights this report started with ({source['init']}) are gone or "
                                 "changed; restore them or choose another --out")
        return source
    if cfg.pretrained_weights:
        source = _from_file(cfg, out)
    else:
        try:
            source = _from_torchvision(cfg, out)
        except FastCifarError as exc:
            if cfg.if_no_weights != "stand-in":
                raise FastCifarError(f"{exc} To try the pipeline without them, add --if-no-weights stand-in (the "
                                     "'pretrained' arm then starts from random weights too).") from None
            source = _stand_in(cfg, out, reason=str(exc))
    if source["kind"] != "torchvision":  # fail before any training if the weights do not fit arch and stems
        state_dict = read_state_dict(Path(source["init"]))
        for stem in sorted({stem for _, stem in cfg.settings}):
            load_pretrained(build_resnet(cfg.base.arch, stem), state_dict, stem)
    return source
