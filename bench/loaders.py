"""How fast do the training loaders deliver augmented CIFAR-10 batches? tensor vs DALI vs torchvision DataLoader.

Question: images/s of a full training epoch (50k images: pad-4 random crop, flip, normalise, on the device) for
fastcifar's tensor loader, its DALI pipeline and the textbook torchvision DataLoader (2 worker processes). Goal:
both fastcifar loaders >= 8x the DataLoader on the CPU. One loader at a time, one untimed warm-up epoch, then
`--epochs` timed ones (--jsonl: one line per loader as it finishes); the load average is recorded beside them.

    python bench/loaders.py --data-dir ~/data/cifar10 [--batch-size 512] [--device auto] [--epochs 5]

Writes bench/results/loaders-<device>.json and prints a table. Results: bench/README.md ("Loaders").
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fastcifar.data.cifar import load_cifar10  # noqa: E402
from fastcifar.data.loaders import dali_available, make_loader  # noqa: E402
from fastcifar.data.loader_contract import LoaderOptions  # noqa: E402
from fastcifar.errors import FastCifarError  # noqa: E402
from fastcifar.fileio import append_jsonl, write_json  # noqa: E402
from fastcifar.runtime import cpu_name, resolve_device  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class PILCifar(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: uint8 HWC array -> PIL image -> transforms."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def dataloader_epochs(images, labels, options: LoaderOptions, device, workers: int):
    """The baseline as an object with set_epoch / iteration, batches moved to `device` like the others."""
    from torchvision import transforms as T

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(options.mean, options.std)])
    loader = torch.utils.data.DataLoader(
        PILCifar(images, labels, transform), batch_size=options.batch_size, shuffle=True, drop_last=True,
        num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda")

    class Baseline:
        def set_epoch(self, epoch):
            pass  # DataLoader reshuffles on each iter()

        def __iter__(self):
            for x, y in loader:
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    return Baseline()


def time_epoch(loader, epoch: int, device) -> tuple[float, int]:
    """Seconds and images for one full epoch, ending when the last batch is really there (CUDA: synchronised)."""
    loader.set_epoch(epoch)
    start, n, touch = time.perf_counter(), 0, torch.zeros((), device=device)
    for x, y in loader:
        n += len(y)
        touch += x[-1, -1, -1, -1].float()  # a device-side use of every batch; no per-batch host sync
    float(touch)  # waits for all queued work
    return time.perf_counter() - start, n


def versions() -> dict:
    import torchvision

    try:
        import nvidia.dali as dali

        dali_version = dali.__version__
    except ImportError:
        dali_version = None
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "dali": dali_version, "cuda": torch.version.cuda}


def loader_builders(args, device, data) -> dict:
    """{kind: () -> loader} for the asked kinds DALI allows; each is built only when its turn comes."""
    options = LoaderOptions(batch_size=args.batch_size, train=True, seed=0)
    images, labels = data.train.images, data.train.labels
    builders = {
        "tensor": lambda: make_loader(images, labels, options, kind="tensor", device=device),
        "dali": lambda: make_loader(images, labels, options, kind="dali", device=device),
        "dataloader": lambda: dataloader_epochs(images, labels, options, device, args.workers),
    }
    return {kind: builders[kind] for kind in args.loaders if kind != "dali" or dali_available()}


def measure(builders: dict, epochs: int, device, on_loader=lambda kind, rates: None) -> dict:
    """Per loader in turn: build, warm up (untimed), time `epochs` epochs, then `on_loader(kind, rates)`."""
    per_epoch = {}
    for kind, build in builders.items():
        loader = build()
        time_epoch(loader, 0, device)
        rates = []
        for epoch in range(1, epochs + 1):
            seconds, n = time_epoch(loader, epoch, device)
            rates.append(n / seconds)
            print(f"  epoch {epoch} {kind:>10}: {n / seconds:9.0f} img/s ({n} images, {seconds:.2f} s)", flush=True)
        per_epoch[kind] = rates
        on_loader(kind, rates)
        del loader
    return per_epoch


def summarise(per_epoch: dict) -> dict:
    base = statistics.median(per_epoch["dataloader"]) if "dataloader" in per_epoch else None
    out = {}
    for kind, rates in per_epoch.items():
        median = statistics.median(rates)
        out[kind] = {"img_per_s_epochs": [round(r) for r in rates], "img_per_s_median": round(median),
                     "img_per_s_best": round(max(rates)),
                     "x_dataloader": round(median / base, 1) if base else None}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="holds cifar-10-batches-py/")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per loader (after 1 warm-up)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (baseline)")
    parser.add_argument("--loaders", nargs="+", default=["tensor", "dali", "dataloader"],
                        choices=["tensor", "dali", "dataloader"])
    parser.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads [torch default]")
    parser.add_argument("--out", type=Path, default=None, help="JSON path [bench/results/loaders-<device>.json]")
    parser.add_argument("--jsonl", type=Path, default=None, help="also append one JSON line per loader as it ends")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.workers < 0:
        raise FastCifarError(f"--epochs must be >= 1 and --workers >= 0 (got {args.epochs}, {args.workers})")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    device = resolve_device(args.device)
    data = load_cifar10(args.data_dir, download=False, progress=False)
    env = versions()
    load_before = os.getloadavg()
    print(f"{cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}, DALI {env.get('dali')}, "
          f"device {device}, batch {args.batch_size}, {len(data.train)} training images, "
          f"torch threads {torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"load average {load_before[0]:.2f}", flush=True)
    def on_loader(kind: str, rates: list[float]) -> None:
        if args.jsonl is not None:
            append_jsonl(args.jsonl, {"loader": kind, "device": str(device), "batch_size": args.batch_size,
                                      "images": len(data.train), "img_per_s_epochs": [round(r) for r in rates],
                                      "img_per_s_median": round(statistics.median(rates)), "versions": env,
                                      "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None})

    per_epoch = measure(loader_builders(args, device, data), args.epochs, device, on_loader)
    results = summarise(per_epoch)
    load_after = os.getloadavg()

    print("\n| loader | median img/s | best img/s | x DataLoader (median) |\n|---|---:|---:|---:|")
    for kind, r in results.items():
        print(f"| {kind} | {r['img_per_s_median']:,} | {r['img_per_s_best']:,} | {r['x_dataloader']} |")
    record = {
        "question": "images/s of a full augmented CIFAR-10 training epoch, per loader",
        "command": " ".join(["python", sys.argv[0]] + (sys.argv[1:] if argv is None else list(argv))),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "load_average_before": load_before, "load_average_after": load_after},
        "versions": env,
        "device": str(device), "batch_size": args.batch_size, "images": len(data.train),
        "epochs_timed": args.epochs, "dataloader_workers": args.workers, "results": results,
    }
    path = write_json(args.out or RESULTS / f"loaders-{device.type}.json", record)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FastCifarError as exc:  # missing data, no CUDA, bad option: one line, no traceback
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
