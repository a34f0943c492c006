"""What durability costs a training run per epoch: the fsyncs of every file it writes (the file before its rename,
the directory after it: fastcifar/fileio.py) and the exclusive lock on its run directory (fileio.DirLock).

Trains the smoke preset (ResNet-18, 32 px, batch 128) for --epochs epochs on the first --images training images of
--data-dir (default $FASTCIFAR_DATA, else a synthetic CIFAR-10 written to a temp folder) with fileio's fsync on and
switched off (fileio._sync made a no-op), runs alternating, --rounds each. Per epoch it times everything the run
directory wrote (metrics.jsonl, results.csv, the best weights and their record, state.pt) and, inside that, the
fsyncs; epoch 1's figures also hold the run's start (config.json, env.json, the first state.pt), so the per-epoch
figures are the medians of epochs 2 and later. The lock is taken once per run and held, not retaken, per epoch: its
cost is an acquire + release, timed --lock-repeats times. Runs are written under --dir (default: a temp folder in
/tmp): the disk decides what fsync costs, so the JSON names the filesystem and device it measured.

    python bench/durability.py [--data-dir ~/data/cifar10] [--images 1000] [--epochs 3] [--rounds 2]

Writes bench/results/durability-cpu.json and prints the machine (CPU model and its vector extensions), versions,
sizes and the per-epoch figures. Results: bench/README.md, "Durability: fsync and the run lock".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WRITERS = ("append_metrics", "save_weights", "save_state", "keep_previous_best", "drop_previous_best")


def filesystem(path: Path) -> dict:
    """The mount `path` is on (/proc/mounts): device, type, mount point."""
    best = {"device": "unknown", "type": "unknown", "mount": "/"}
    try:
        mounts = [line.split()[:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return best
    resolved = str(path.resolve())
    for device, mount, fstype in mounts:
        if (resolved == mount or resolved.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best["mount"]):
            best = {"device": device, "type": fstype, "mount": mount}
    return best


def one_run(data_dir: Path, out: Path, images: int, epochs: int, fsync: bool) -> list[dict]:
    """One smoke run: per epoch, seconds in the run directory's writes, in fsync, and the epoch's own seconds."""
    from fastcifar import fileio
    from fastcifar.config import make_train_config
    from fastcifar.rundir import RunDir
    from fastcifar.train.loop import train

    clock = {"write": 0.0, "fsync": 0.0, "fsyncs": 0}
    real_sync = fileio._sync

    def sync(fd: int) -> None:
        start = time.perf_counter()
        if fsync:
            real_sync(fd)
        clock["fsync"] += time.perf_counter() - start
        clock["fsyncs"] += 1

    originals = {name: getattr(RunDir, name) for name in WRITERS}

    def timed(method):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                clock["write"] += time.perf_counter() - start
        return wrapper

    epochs_seen: list[dict] = []

    def on_epoch_end(epoch: int, metrics: dict) -> None:  # after the epoch's records and state.pt
        epochs_seen.append({"epoch": epoch, "write_s": clock["write"], "fsync_s": clock["fsync"],
                            "fsyncs": clock["fsyncs"], "epoch_s": metrics["train_seconds"] + metrics["eval_seconds"],
                            "state_bytes": (out / "state.pt").stat().st_size})
        clock.update(write=0.0, fsync=0.0, fsyncs=0)

    cfg = make_train_config("smoke", {"data_dir": str(data_dir), "device": "cpu", "loader": "tensor",
                                      "epochs": epochs, "train_limit": images, "out": str(out), "download": False})
    fileio._sync = sync
    for name in WRITERS:
        setattr(RunDir, name, timed(originals[name]))
    try:
        train(cfg, progress=False, on_epoch_end=on_epoch_end, keep_state=True)
    finally:
        fileio._sync = real_sync
        for name, method in originals.items():
            setattr(RunDir, name, method)
    best = out / "best.safetensors"
    for row in epochs_seen:
        row["best_bytes"] = best.stat().st_size if best.exists() else 0
    return epochs_seen


def lock_cost(folder: Path, repeats: int) -> float:
    """Median seconds of one DirLock acquire + release (the lock file created, flocked, its PID written, removed)."""
    from fastcifar.fileio import DirLock

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        DirLock(folder).acquire().release()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=os.environ.get("FASTCIFAR_DATA"),
                    help="CIFAR-10 [$FASTCIFAR_DATA; else synthetic images]")
    ap.add_argument("--images", type=int, default=1000, help="training images per epoch, before the val split [1000]")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run, at least 2 [3]")
    ap.add_argument("--rounds", type=int, default=2, help="runs with fsync and without, alternating [2]")
    ap.add_argument("--lock-repeats", type=int, default=200, help="lock acquire + release timings [200]")
    ap.add_argument("--dir", type=Path, default=None, help="where the runs are written [a temp folder in /tmp]")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "durability-cpu.json")
    args = ap.parse_args(argv)
    if args.epochs < 2:
        ap.error("--epochs must be at least 2 (epoch 1 also pays the run's start)")

    import safetensors
    import torch

    from fastcifar import __version__
    from fastcifar.runtime import cpu_name, cpu_vector_extensions

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        data_dir = args.data_dir
        if data_dir is None:
            from fastcifar.data.synthetic import write_synthetic_cifar

            data_dir = tmp / "data"
            write_synthetic_cifar(data_dir, n_train=args.images, n_test=1000, seed=0)
        machine = {"cpu": cpu_name(), "vector_extensions": cpu_vector_extensions(), "cores": os.cpu_count(),
                   "filesystem": filesystem(tmp)}
        versions = {"python": platform.python_version(), "torch": torch.__version__,
                    "safetensors": safetensors.__version__, "fastcifar": __version__}
        print(f"machine: {machine['cpu']} ({', '.join(machine['vector_extensions']) or 'no AVX2/AVX-512'}), "
              f"{machine['cores']} cores; runs on {machine['filesystem']['type']} ({machine['filesystem']['device']})")
        print(f"versions: {versions}; data: {data_dir} ({'real' if args.data_dir else 'synthetic'}), "
              f"{args.images} images, {args.epochs} epochs, {args.rounds} rounds")
        rows = []
        for round_ in range(args.rounds):
            for fsync in (True, False):
                epochs = one_run(Path(data_dir), tmp / f"run-{round_}-{fsync}", args.images, args.epochs, fsync)
                for row in epochs:
                    rows.append({"round": round_, "fsync": fsync, **row})
                    print(f"round {round_} fsync {'on ' if fsync else 'off'} epoch {row['epoch']}: epoch "
                          f"{row['epoch_s']:.1f} s, writes {row['write_s'] * 1000:.0f} ms, of which fsync "
                          f"{row['fsync_s'] * 1000:.0f} ms ({row['fsyncs']} calls)", flush=True)
        lock_s = lock_cost(tmp / "locked", args.lock_repeats)

    def median(key: str, fsync: bool) -> float:  # epochs after the first: the run's start is not an epoch's cost
        return statistics.median(r[key] for r in rows if r["fsync"] is fsync and r["epoch"] > 1)

    summary = {
        "epoch_s": median("epoch_s", True),
        "write_s_fsync_on": median("write_s", True), "write_s_fsync_off": median("write_s", False),
        "fsync_s": median("fsync_s", True), "fsyncs_per_epoch": median("fsyncs", True),
        "lock_acquire_release_s": lock_s,
    }
    # The cost is the time inside fsync (what switching it off removes). The difference of the write totals with and
    # without says the same within its noise: serializing ~135 MB per epoch varies by more than the fsyncs take.
    summary["fsync_pct_of_epoch"] = 100 * summary["fsync_s"] / summary["epoch_s"]
    summary["fsync_s_max"] = max(r["fsync_s"] for r in rows if r["fsync"] and r["epoch"] > 1)
    summary["write_difference_s"] = summary["write_s_fsync_on"] - summary["write_s_fsync_off"]
    summary["lock_pct_of_epoch"] = 100 * lock_s / summary["epoch_s"]
    sizes = {"images": args.images, "epochs": args.epochs, "rounds": args.rounds,
             "state_bytes": rows[-1]["state_bytes"], "best_bytes": max(r["best_bytes"] for r in rows)}
    record = {"bench": "durability", "date": time.strftime("%Y-%m-%d"), "machine": machine, "versions": versions,
              "data": "real CIFAR-10" if args.data_dir else "synthetic", "sizes": sizes, "summary": summary,
              "epochs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"per epoch (median of epochs 2+): {summary['epoch_s']:.1f} s; fsync {summary['fsync_s'] * 1000:.0f} ms "
          f"(max {summary['fsync_s_max'] * 1000:.0f} ms, {summary['fsyncs_per_epoch']:.0f} calls) = "
          f"{summary['fsync_pct_of_epoch']:.2f} % of the epoch; all its writes {summary['write_s_fsync_on'] * 1000:.0f}"
          f" ms with fsync, {summary['write_s_fsync_off'] * 1000:.0f} ms without. Lock: {lock_s * 1e6:.0f} us per "
          f"acquire + release, once per run ({summary['lock_pct_of_epoch']:.4f} % of one epoch); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
