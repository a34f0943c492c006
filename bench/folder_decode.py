#!/usr/bin/env python3
"""Feeding training from a folder of JPEGs: DALI decoding the files vs a torchvision ImageFolder + DataLoader, and
fastcifar's decode-once cache.

Builds an image folder from real CIFAR-10 training images (`--per-class` per class, upscaled to `--size` px, JPEG
quality 90), then measures images/s of one 32 px training epoch for `dali-files` (DaliFileLoader), `dataloader`
(ImageFolder + DataLoader with `--workers` processes), `cache-decode` (fastcifar's one-time decode, per image) and
`tensor` (the tensor loader over that cache); best of `--repeats` epochs after one warm-up.

    python bench/folder_decode.py                         # 5,000 images at 96 px, batch 256
    python bench/folder_decode.py --per-class 200 --size 64 --json /tmp/decode.json

Results: bench/README.md ("Image folders: decoding").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from fastcifar.data.cifar import default_data_dir  # noqa: E402 - after the checkout is importable
from fastcifar.runtime import cpu_name, cpu_vector_extensions  # noqa: E402

DEFAULT_DATA = default_data_dir()  # $FASTCIFAR_DATA, else ~/.cache/fastcifar: where every verb looks


def build_folder(root: Path, data_dir: Path, per_class: int, size: int) -> Path:
    from fastcifar.data.cifar import load_class_names, load_split, locate_cifar
    from fastcifar.data.synthetic import write_image_folder

    batches = locate_cifar(data_dir)
    train, names = load_split(batches, "train"), load_class_names(batches)
    picked = np.concatenate([np.flatnonzero(train.labels == c)[:per_class] for c in range(len(names))])
    return write_image_folder(root, train.images[picked], train.labels[picked], names, size=size, quality=90)


def timed_epochs(make_iter, repeats: int) -> tuple[float, int]:
    """(best seconds, images) over `repeats` epochs after one warm-up epoch."""
    n = sum(len(y) for _, y in make_iter())
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in make_iter():
            pass
        best = min(best, time.perf_counter() - start)
    return best, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help=f"[default: {DEFAULT_DATA}]")
    parser.add_argument("--folder", type=Path, default=None, help="build (or reuse) the image folder here")
    parser.add_argument("--per-class", type=int, default=500, help="[default: 500]")
    parser.add_argument("--size", type=int, default=96, help="stored image size in px [default: 96]")
    parser.add_argument("--batch", type=int, default=256, help="[default: 256]")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers [default: 2]")
    parser.add_argument("--repeats", type=int, default=2, help="timed epochs each [default: 2]")
    parser.add_argument("--device", default="cpu", help="[default: cpu]")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    load_start = round(os.getloadavg()[0], 2)  # CPU figures mean little without the machine's load

    import torch
    import torchvision
    from torchvision import transforms

    import fastcifar
    from fastcifar.data import folder as folder_mod
    from fastcifar.data.dali_files import DaliFileLoader
    from fastcifar.data.loaders import make_loader
    from fastcifar.data.loader_contract import LoaderOptions
    from fastcifar.preprocess import CIFAR_MEAN, CIFAR_STD
    from fastcifar.runtime import package_version

    tmp = tempfile.TemporaryDirectory()
    root = args.folder or Path(tmp.name) / "folder"
    if not (root / "train").is_dir():
        print(f"building {args.per_class * 10} JPEGs at {args.size} px in {root}", file=sys.stderr)
        build_folder(root, args.data_dir, args.per_class, args.size)
    cache = Path(tmp.name) / "cache"
    rows = {}

    start = time.perf_counter()
    data = folder_mod.load_image_folder(root, cache_dir=cache, progress=False)
    seconds = time.perf_counter() - start
    n_all = len(data.train) + len(data.test)
    rows["cache-decode"] = {"images_per_s": n_all / seconds, "images": n_all, "seconds": seconds}
    files, labels = data.files["train"], data.train.labels
    device = torch.device(args.device)
    options = LoaderOptions(batch_size=args.batch, train=True, seed=0)

    dali = DaliFileLoader(files, labels, options, device)
    s, n = timed_epochs(lambda: iter(dali), args.repeats)
    rows["dali-files"] = {"images_per_s": n / s, "images": n, "seconds": s}

    tensor = make_loader(data.train.images, labels, options, kind="tensor", device=device)
    s, n = timed_epochs(lambda: iter(tensor), args.repeats)
    rows["tensor"] = {"images_per_s": n / s, "images": n, "seconds": s}

    transform = transforms.Compose([transforms.RandomResizedCrop(32, scale=options.crop_scale),
                                    transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                    transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    dataset = torchvision.datasets.ImageFolder(str(root / "train"), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True,
                                         num_workers=args.workers, persistent_workers=args.workers > 0)
    s, n = timed_epochs(lambda: iter(loader), args.repeats)
    rows["dataloader"] = {"images_per_s": n / s, "images": n, "seconds": s}

    base = rows["dataloader"]["images_per_s"]
    for row in rows.values():
        row["vs_dataloader"] = round(row["images_per_s"] / base, 2)
        row["images_per_s"] = round(row["images_per_s"], 1)
        row["seconds"] = round(row["seconds"], 3)
    result = {"rows": rows, "images": n_all, "jpeg_size_px": args.size, "batch": args.batch, "device": str(device),
              "dataloader_workers": args.workers, "repeats": args.repeats,
              "machine": {"host": platform.node(), "cpu": cpu_name(), "vector": cpu_vector_extensions(),
                          "cpu_count": os.cpu_count(), "load_average_start": load_start,
                          "load_average_end": round(os.getloadavg()[0], 2)},
              "versions": {"python": platform.python_version(), "torch": torch.__version__,
                           "torchvision": torchvision.__version__, "dali": package_version("nvidia-dali-cuda130"),
                           "pillow": package_version("pillow"), "fastcifar": fastcifar.__version__},
              "date": time.strftime("%Y-%m-%d")}
    print(f"{'loader':<14}{'images/s':>12}{'vs DataLoader':>15}")
    for name, row in rows.items():
        print(f"{name:<14}{row['images_per_s']:>12,.1f}{row['vs_dataloader']:>14.2f}x")
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    tmp.cleanup()


if __name__ == "__main__":
    main()
