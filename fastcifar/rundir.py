"""The run directory: the one place that knows its file names, how a run is created, and how its files are read.

Every reader and writer of `runs/<name>/` goes through here (timm's `CheckpointSaver` owns its checkpoint names
the same way), so a newcomer who changes a file name or what "finished" means changes it once:

    config.json      the TrainConfig the run started with (train/loop.py writes it)
    env.json         versions, machine, GPU, git sha (runtime.env_info)
    metrics.jsonl    one line per epoch
    state.pt         optimizer/scheduler/RNG/EMA for resuming (removed once finished unless --keep-state)
    model.safetensors + model.json   the final weights and what is needed to serve them (models.save_model)
    summary.json     the finished run's figures; `"status": "finished"` is what makes a run finished
    results.csv      metrics.jsonl as a table, one row per epoch (timm's summary.csv, Ultralytics' results.csv)
    best.safetensors + best.json     the weights (EMA's where EMA is on) of the epoch with the best validation
                     accuracy, when there is a validation split; `--checkpoint best` serves them
    git.diff         the uncommitted changes the run was made with, when small (env.json has their sha256)
    tensorboard/     TensorBoard event files, with --tensorboard
    robustness.json  calibration and corruption accuracy of the final model (study/compare.py caches it)

A compare report directory holds runs like these plus pretrained.json (PRETRAINED_FILE): where its pretrained arm's
weights really came from, which ARM_LABELS names in the report and the demo alike.

Shared by the wings (train, study, serve, bench); imports nothing but the standard library, fileio and errors.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fastcifar.errors import FastCifarError
from fastcifar.fileio import first_missing, read_jsonl

CONFIG_FILE = "config.json"
ENV_FILE = "env.json"
METRICS_FILE = "metrics.jsonl"
STATE_FILE = "state.pt"
MODEL_FILE = "model.safetensors"
MODEL_META = "model.json"
SUMMARY_FILE = "summary.json"
RESULTS_CSV = "results.csv"
BEST_FILE = "best.safetensors"
GIT_DIFF_FILE = "git.diff"
TENSORBOARD_DIR = "tensorboard"
ROBUSTNESS_FILE = "robustness.json"
CHECKPOINTS = {"final": MODEL_FILE, "best": BEST_FILE}  # what --checkpoint names
# results.csv's columns: metrics.jsonl's keys in a fixed order (a missing value is an empty cell).
RESULTS_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                   "images_per_second", "train_seconds", "elapsed_train_seconds")

PRETRAINED_FILE = "pretrained.json"

RUN_STATES = ("finished", "interrupted", "new")
ARM_LABELS = {  # the pretrained arm's name says what its weights really were (pretrained.json's "kind")
    "torchvision": "ImageNet-pretrained", "stand-in": "pretrained (STAND-IN random weights)",
    "file": "pretrained (unverified weights file)",
}


def default_run_name(arch: str, init: str) -> str:
    """runs/<arch>-<init>-<timestamp>: a path given as --init shows as 'file'."""
    init = init if init in ("random", "imagenet") else "file"
    return f"{arch}-{init}-{time.strftime('%Y%m%d-%H%M%S')}"


def create_run_dir(run_dir: Path) -> Path | None:
    """Create the (new or empty) run directory; returns the topmost directory created, or None.

    A user's run is never overwritten: a non-empty directory is refused with the resume command. A path that cannot
    be a directory (under a file, in /proc, no permission) is one message naming it. The returned path lets a run
    that fails before its first epoch remove exactly what it created, never what existed.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise FastCifarError(f"{run_dir} already exists and is not empty; choose another --out, or continue "
                             f"it with: fastcifar train --resume {run_dir}")
    created = first_missing(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FastCifarError(f"cannot create the run directory {run_dir}: {exc.strerror or exc}") from None
    return created


def read_summary(run_dir: Path) -> dict | None:
    """summary.json as a dict, or None when it is missing or unreadable (an unfinished run has none)."""
    try:
        summary = json.loads((Path(run_dir) / SUMMARY_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return summary if isinstance(summary, dict) else None


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl: one dict per finished epoch ([] before the first)."""
    return read_jsonl(Path(run_dir) / METRICS_FILE)


def is_finished(run_dir: Path) -> bool:
    """True when the run's summary.json says it finished."""
    return (read_summary(run_dir) or {}).get("status") == "finished"


def run_state(run_dir: Path) -> str:
    """'finished' (summary says so), 'interrupted' (has a resumable state) or 'new' (absent or setup-only)."""
    run_dir = Path(run_dir)
    if is_finished(run_dir):
        return "finished"
    if (run_dir / STATE_FILE).is_file() and (run_dir / CONFIG_FILE).is_file():
        return "interrupted"
    return "new"


def write_results_csv(run_dir: Path, history: list[dict]) -> Path:
    """results.csv from the epochs so far (rewritten whole and atomically, like every file here)."""
    import csv
    import io

    from fastcifar.fileio import write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULTS_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if m.get(k) is None else m[k]) for k in RESULTS_COLUMNS} for m in history)
    return write_text(Path(run_dir) / RESULTS_CSV, buffer.getvalue())


def meta_path(weights: Path) -> Path:
    """The metadata beside a weights file: best.safetensors -> best.json, model.safetensors -> model.json; a file
    with another name falls back to model.json beside it."""
    own = weights.with_suffix(".json")
    return own if own.is_file() or weights.name in CHECKPOINTS.values() else weights.with_name(MODEL_META)


def checkpoint_file(model_path: Path | str, checkpoint: str) -> Path:
    """`RUN` + --checkpoint final|best -> the path to serve: the run directory itself for final (unchanged), its
    best.safetensors for best (one message when the run kept none)."""
    model_path = Path(model_path).expanduser()
    if checkpoint not in CHECKPOINTS:
        raise FastCifarError(f"unknown --checkpoint '{checkpoint}' (choose from {', '.join(CHECKPOINTS)})")
    if checkpoint == "final":
        return model_path
    if not model_path.is_dir():
        raise FastCifarError(f"--checkpoint {checkpoint} takes a run directory, got the file {model_path}")
    best = model_path / BEST_FILE
    if not best.is_file():
        raise FastCifarError(f"{model_path} has no {BEST_FILE}: a run keeps one only with a validation split "
                             "(--val-fraction > 0), and only once it finished an epoch")
    return best


def looks_like_run_dir(path: Path) -> bool:
    """A directory holding any of a run's own files (a model, its metadata or a config)."""
    return Path(path).is_dir() and any((Path(path) / name).is_file() for name in (MODEL_FILE, MODEL_META, CONFIG_FILE))


def recorded_meta(model_path: Path | str) -> dict:
    """model.json beside `model_path` (a run directory or its model.safetensors), {} when there is none (an .onnx
    or engine elsewhere): which dataset the run trained on (fastcifar/data/datasets.model_split reads it)."""
    model_path = Path(model_path).expanduser()
    folder = model_path if model_path.is_dir() else model_path.parent
    try:
        meta = json.loads((folder / MODEL_META).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def recorded_data_dirs(model_path: Path | str) -> list[Path]:
    """The data_dir a run recorded in model.json / config.json beside `model_path` (a run directory or its
    model.safetensors), if any: where export, evaluate, bench and the demo look for test images when no --data-dir
    is given. Best effort: never fails (an .onnx or engine elsewhere records none)."""
    model_path = Path(model_path).expanduser()
    folder = model_path if model_path.is_dir() else model_path.parent
    found = []
    for name in (MODEL_META, CONFIG_FILE):
        try:
            value = json.loads((folder / name).read_text()).get("data_dir")
        except (OSError, ValueError, AttributeError):
            continue
        if value:
            found.append(Path(value).expanduser())
    return found
