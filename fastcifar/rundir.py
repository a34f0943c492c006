"""The run directory: its file names, the one writer of its files (`RunDir`), and how runs are read back.

`RunDir` creates (or opens) `runs/<name>/` and writes every file a run holds, each atomically (temp file +
rename), so no other module builds a path into a run directory to write it; docs/run-directory.md says what each
file holds. The module-level functions read runs (summary, metrics, state, which checkpoint to serve). Imports
the standard library, fileio and errors; torch, safetensors and TensorBoard only inside the methods that need them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fastcifar.errors import FastCifarError
from fastcifar.fileio import append_jsonl, atomic_path, first_missing, read_jsonl, write_json, write_jsonl, write_text

GIT_DIFF_KEEP_BYTES = 256 * 1024  # a run keeps the diff itself up to this size (env.json always has its hash)
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
# The run's records without weights, state or TensorBoard events (RunDir.small_files).
SMALL_FILES = (CONFIG_FILE, ENV_FILE, METRICS_FILE, RESULTS_CSV, SUMMARY_FILE, MODEL_META,
               Path(BEST_FILE).with_suffix(".json").name, GIT_DIFF_FILE, ROBUSTNESS_FILE)

RUN_STATES = ("finished", "interrupted", "new")
ARM_LABELS = {  # the pretrained arm's name says what its weights really were (pretrained.json's "kind")
    "torchvision": "ImageNet-pretrained", "package": "ImageNet-pretrained",
    "stand-in": "pretrained (STAND-IN random weights)", "file": "pretrained (unverified weights file)",
}


def default_run_name(arch: str, init: str) -> str:
    """runs/<arch>-<init>-<timestamp>: a path given as --init shows as 'file'."""
    init = init if init in ("random", "imagenet") else "file"
    return f"{arch}-{init}-{time.strftime('%Y%m%d-%H%M%S')}"


class RunDir:
    """One run directory and every file in it (timm's CheckpointSaver owns its checkpoints the same way)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.created: Path | None = None  # the topmost directory `create` made (what `discard` removes)

    @classmethod
    def create(cls, path: Path | str) -> "RunDir":
        """A new run: the directory is created, or must be empty. A user's run is never overwritten (a non-empty
        directory is refused with the resume command); a path that cannot be a directory is one message."""
        run = cls(path)
        if run.path.exists() and (not run.path.is_dir() or any(run.path.iterdir())):
            raise FastCifarError(f"{run.path} already exists and is not empty; choose another --out, or continue "
                                 f"it with: fastcifar train --resume {run.path}")
        run.created = first_missing(run.path)
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FastCifarError(f"cannot create the run directory {run.path}: {exc.strerror or exc}") from None
        return run

    def discard(self) -> None:
        """Remove what `create` made (a run that failed before its first epoch leaves nothing; never a user's dir)."""
        import shutil

        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)

    def remove(self) -> None:
        """Remove the whole directory (compare: what a setup that never trained left)."""
        import shutil

        shutil.rmtree(self.path, ignore_errors=True)

    # ------------------------------------------------------------------------------------------ records

    def write_config(self, config: dict) -> None:
        write_json(self.path / CONFIG_FILE, config)

    def write_env(self, env: dict, diff: str | None) -> None:
        """env.json, and the git diff it hashes as git.diff when it is small (GIT_DIFF_KEEP_BYTES)."""
        write_json(self.path / ENV_FILE, env)
        if diff and len(diff.encode()) <= GIT_DIFF_KEEP_BYTES:
            write_text(self.path / GIT_DIFF_FILE, diff)

    def append_metrics(self, metrics: dict, history: list[dict]) -> None:
        """One epoch: a line of metrics.jsonl and results.csv rewritten whole."""
        append_jsonl(self.path / METRICS_FILE, metrics)
        self._write_results_csv(history)

    def rewrite_metrics(self, history: list[dict]) -> None:
        """metrics.jsonl and results.csv as `history` (a resumed run drops the epochs after its saved state)."""
        write_jsonl(self.path / METRICS_FILE, history)
        self._write_results_csv(history)

    def _write_results_csv(self, history: list[dict]) -> None:
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=RESULTS_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if m.get(k) is None else m[k]) for k in RESULTS_COLUMNS} for m in history)
        write_text(self.path / RESULTS_CSV, buffer.getvalue())

    def write_summary(self, summary: dict) -> None:
        write_json(self.path / SUMMARY_FILE, summary)

    def write_robustness(self, result: dict) -> None:
        write_json(self.path / ROBUSTNESS_FILE, result)

    def read_robustness(self) -> dict | None:
        try:
            return json.loads((self.path / ROBUSTNESS_FILE).read_text())
        except (OSError, ValueError):
            return None

    # ------------------------------------------------------------------------------------------ state and weights

    def has_state(self) -> bool:
        return (self.path / STATE_FILE).is_file()

    def save_state(self, state: dict) -> None:
        """state.pt: what continuing after an epoch needs (tensors and plain values; read back weights_only)."""
        import torch

        with atomic_path(self.path / STATE_FILE) as tmp:
            torch.save(state, tmp)

    def load_state(self, device) -> dict:
        import torch

        path = self.path / STATE_FILE
        try:
            return torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - corrupt or foreign file
            raise FastCifarError(f"cannot resume from {path}: unreadable ({type(exc).__name__})") from None

    def drop_state(self) -> None:
        (self.path / STATE_FILE).unlink(missing_ok=True)

    def save_weights(self, state: dict, meta: dict, checkpoint: str = "final") -> Path:
        """model.safetensors + model.json (or, for checkpoint "best", best.safetensors + best.json)."""
        from safetensors.torch import save_file

        weights = self.path / CHECKPOINTS[checkpoint]
        with atomic_path(weights) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        write_json(meta_path(weights), meta)
        return weights

    def best_meta(self) -> dict | None:
        """best.json of the best-validation checkpoint, None when there is none (or it is unreadable)."""
        try:
            return json.loads(meta_path(self.path / BEST_FILE).read_text()) if (self.path / BEST_FILE).is_file() \
                else None
        except (OSError, ValueError):
            return None

    def drop_best(self) -> None:
        (self.path / BEST_FILE).unlink(missing_ok=True)
        meta_path(self.path / BEST_FILE).unlink(missing_ok=True)

    def small_files(self) -> dict[str, str]:
        """The run's records as text (everything but weights, state and TensorBoard): what a Ray task sends back so
        the driver can build the report where workers share no filesystem."""
        out = {}
        for name in SMALL_FILES:
            try:
                out[name] = (self.path / name).read_text()
            except OSError:
                continue
        return out

    def write_files(self, files: dict[str, str]) -> None:
        """The records `small_files` gave, written here where they are missing or differ (a shared filesystem
        already has them)."""
        self.path.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            if name not in SMALL_FILES:
                raise FastCifarError(f"{name} is not a file of a run directory")
            try:
                same = (self.path / name).read_text() == text
            except OSError:
                same = False
            if not same:
                write_text(self.path / name, text)

    def tensorboard_writer(self, log_dir: Path | str | None = None):
        """A TensorBoard SummaryWriter into RUN/tensorboard (or `log_dir`); needs the tensorboard package."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise FastCifarError("--tensorboard needs the tensorboard package: pip install 'fastcifar[tensorboard]' "
                                 "(or pip install tensorboard)") from None
        return SummaryWriter(log_dir=str(Path(log_dir) if log_dir else self.path / TENSORBOARD_DIR))


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
