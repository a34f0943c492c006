"""The demo's example gallery: the dataset's own test images (upscaled for display) and the user's own images."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fastcifar.errors import FastCifarError

log = logging.getLogger(__name__)

EXAMPLES_PER_CLASS = 2
EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
MAX_USER_EXAMPLES = 60


def cifar_examples(data_dir: Path | None, model_paths: Sequence[Path], out_dir: Path,
                   per_class: int = EXAMPLES_PER_CLASS) -> list[tuple[str, str]]:
    """(png path, caption) for the first `per_class` test images of each class.

    The files keep the real 32 px test pixels (load_image passes them through bit for bit, so clicking one
    classifies exactly the test image); the page upscales them for display with CSS (`pixelated`), which a
    pre-upscaled file could not do without blurring what the model sees when it is resized back down.

    An explicit `data_dir` without CIFAR-10 is a user mistake; the implicit places (the models' recorded
    data dir, $FASTCIFAR_DATA, ~/.cache/fastcifar) are only looked in. Nothing is ever downloaded here. Models
    trained on CIFAR-100 or an image folder (model.json's `dataset`) show their own test images.
    """
    from fastcifar.data.cifar import load_class_names, load_split, locate_cifar
    from fastcifar.rundir import recorded_data_dirs, recorded_meta
    from fastcifar.serve.artifacts import source_run_dir

    sources = [source_run_dir(p) or p for p in model_paths]  # an .onnx / engine: the run it came from, if here
    recorded = [d for p in sources for d in recorded_data_dirs(p)]
    meta = next((m for m in map(recorded_meta, sources) if m), {})
    if meta.get("dataset", "cifar10") != "cifar10":  # CIFAR-100 or an image folder: its own test images
        from fastcifar.data.datasets import model_split

        try:
            test, _ = model_split("test", data_dir, meta, recorded=recorded)
        except FastCifarError as exc:
            if data_dir is not None:
                raise
            log.warning("the models' %s test images are unusable for the gallery: %s", meta["dataset"], exc)
            return []
        return _gallery(test, tuple(meta.get("class_names") or ()), meta["dataset"], out_dir, per_class)
    try:
        root = locate_cifar(data_dir, recorded, required=data_dir is not None)
    except FastCifarError as exc:
        raise FastCifarError(f"--data-dir {data_dir} holds no CIFAR-10 batch files for the example gallery "
                             f"({exc})") from None
    if root is None:
        log.info("no CIFAR-10 found for the example gallery (looked in %s and the default data dir)",
                 ", ".join(map(str, recorded)) or "no recorded data dir")
        return []
    try:
        test, names = load_split(root, "test"), load_class_names(root)
    except FastCifarError as exc:
        if data_dir is not None:
            raise
        log.warning("CIFAR-10 in %s is unusable for the gallery: %s", root, exc)
        return []
    return _gallery(test, names, "cifar10", out_dir, per_class)


def _gallery(test, names, dataset: str, out_dir: Path, per_class: int) -> list[tuple[str, str]]:
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    examples = []
    for cls, name in enumerate(names):
        for index in np.flatnonzero(test.labels == cls)[:per_class]:
            safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
            path = out_dir / f"{dataset}-test-{index:05d}-{safe}.png"
            Image.fromarray(test.images[index]).save(path)
            examples.append((str(path), f"{name} #{index}"))
    return examples


def user_examples(folder: Path | None) -> list[tuple[str, str]]:
    """The user's own images from `folder`, by name; they are validated only when clicked, like uploads."""
    if folder is None:
        return []
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FastCifarError(f"--examples {folder} is not a directory")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXAMPLE_SUFFIXES)
    if len(files) > MAX_USER_EXAMPLES:
        log.warning("%s holds %d images; the gallery shows the first %d", folder, len(files), MAX_USER_EXAMPLES)
    return [(str(p), p.name) for p in files[:MAX_USER_EXAMPLES]]


# ---------------------------------------------------------------------------------------------- page
