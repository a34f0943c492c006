"""Robustness wing: what a model does beyond clean top-1 - calibration (`metrics.py`) and accuracy under the
CIFAR-10-C corruptions (`corruptions.py`, generated on the device; or the official files with `--cifar10c`).

Owns `evaluate_logits(logits_fn, images, labels, ...)`, which any caller feeds with its own logits function (a
serving Predictor in `fastcifar.serve.evaluate_model`, a trained run's model in the compare report), so this wing
imports neither serving nor training. Parsing of the corruption/severity options lives here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from fastcifar.errors import FastCifarError
from fastcifar.robustness.metrics import calibration

CIFAR10C_PER_SEVERITY = 10_000  # the official files: 5 severities x the 10,000 test images, in order


def corruption_names() -> tuple[str, ...]:
    from fastcifar.robustness.corruptions import CORRUPTIONS

    return tuple(CORRUPTIONS)


def parse_corruptions(text: str, known: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """'all' | 'none' | 'name,name' -> names; an unknown name is one message (exit 2)."""
    known = known or corruption_names()
    text = text.strip().lower()
    if text == "all":
        return known
    if text in ("none", ""):
        return ()
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise FastCifarError(f"unknown corruption(s) {', '.join(unknown)} (choose from all, none, "
                             f"{', '.join(known)})", exit_code=2)
    return names


def parse_severities(text: str, option: str = "--severities") -> tuple[int, ...]:
    """'1,3,5' or '1-5' -> (1, 3, 5) / (1, 2, 3, 4, 5); outside 1-5 is one message (exit 2) naming `option`, the one
    the user typed (evaluate's --severities, compare's --robustness-severities)."""
    try:
        if "-" in text.strip("-"):
            lo, hi = (int(p) for p in text.split("-", 1))
            if lo > hi:
                raise FastCifarError(f"{option} range '{text}' runs backwards: write it low to high, e.g. "
                                     f"{hi}-{lo}", exit_code=2)
            values = tuple(range(lo, hi + 1))
        else:
            values = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise FastCifarError(f"{option} takes numbers 1-5 like 1,3,5 or 1-5, got '{text}'", exit_code=2) from None
    if not values or any(not 1 <= v <= 5 for v in values):
        raise FastCifarError(f"{option} must be within 1-5, got '{text}'", exit_code=2)
    return tuple(sorted(set(values)))


def load_cifar10c(directory: Path | str, names: tuple[str, ...]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The official CIFAR-10-C arrays (`<corruption>.npy`, (50000, 32, 32, 3) uint8) and `labels.npy`.

    A missing file or one of the wrong shape or dtype is one message naming it (exit 2)."""
    directory = Path(directory).expanduser()
    total = 5 * CIFAR10C_PER_SEVERITY

    def read(name: str, shape: tuple) -> np.ndarray:
        path = directory / f"{name}.npy"
        if not path.is_file():
            raise FastCifarError(f"--cifar10c {directory} has no {path.name}", exit_code=2)
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise FastCifarError(f"{path} is not a readable .npy array ({exc})", exit_code=2) from None
        if array.shape != shape or array.dtype != np.uint8:
            raise FastCifarError(f"{path} holds {array.dtype} {array.shape}; CIFAR-10-C files are uint8 {shape}",
                                 exit_code=2)
        return array

    labels = read("labels", (total,))
    return {name: read(name, (total, 32, 32, 3)) for name in names}, np.asarray(labels, dtype=np.int64)


def evaluate_logits(logits_fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: np.ndarray, *,
                    corruptions: tuple[str, ...], severities: tuple[int, ...], seed: int = 0, device="cpu",
                    cifar10c: Path | str | None = None, batch: int = 1000,
                    log: Callable[[str], None] = lambda message: None) -> dict:
    """Clean calibration, then accuracy (and NLL, ECE) per corruption and severity.

    `logits_fn(uint8 NHWC) -> float logits`. Without `cifar10c` each corruption is generated from `images` on
    `device` in batches (fixed `seed`); with it, the official files are read instead: per severity, the rows of the
    same test images as `images` (CIFAR-10-C keeps the test split's order, so the first len(images) rows; all
    10,000 for the full test set, fewer with --max-images).
    """
    import torch

    from fastcifar.robustness.corruptions import corrupt

    def logits_of(pixels: np.ndarray) -> np.ndarray:
        return np.concatenate([logits_fn(pixels[i:i + batch]) for i in range(0, len(pixels), batch)])

    clean = calibration(logits_of(images), labels)
    official = load_cifar10c(cifar10c, corruptions) if cifar10c else None
    per: dict[str, dict[str, dict]] = {}
    for name in corruptions:
        log(f"{name}: severities {', '.join(map(str, severities))}")
        for severity in severities:
            if official is not None:
                start = (severity - 1) * CIFAR10C_PER_SEVERITY
                rows = slice(start, start + min(len(images), CIFAR10C_PER_SEVERITY))
                pixels, truth = np.array(official[0][name][rows]), official[1][rows]  # a copy: the file is mapped
            else:
                source = torch.from_numpy(images).to(device)
                pixels = np.concatenate([corrupt(source[i:i + batch], name, severity, seed + i).cpu().numpy()
                                         for i in range(0, len(images), batch)])
                truth = labels
            result = calibration(logits_of(pixels), truth)
            result.pop("reliability")
            per.setdefault(name, {})[str(severity)] = result
    accs = [r["accuracy"] for by_severity in per.values() for r in by_severity.values()]
    mean = float(np.mean(accs)) if accs else None
    return {"clean": clean, "corruptions": per, "severities": list(severities),
            "mean_corruption_acc": mean,
            "relative_corruption_acc": None if mean is None or not clean["accuracy"] else mean / clean["accuracy"],
            "source": "CIFAR-10-C files " + str(Path(cifar10c).expanduser()) if cifar10c else
            f"generated from the test images on {device} (seed {seed})", "seed": seed}
