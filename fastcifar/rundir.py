"""The run directory: its file names, the one writer of its files (`RunDir`), and how runs are read back.

`RunDir` creates (or opens) `runs/<name>/` and writes every file a run holds, each atomically and durably (temp
file, fsync, rename: fileio.atomic_path), under an exclusive lock held while it writes (fileio.DirLock), so no other
module or process writes into a run directory; docs/run-directory.md says what each file holds and what a kill, a
full disk or a second writer leaves ("Reliability"). The module-level functions read runs (summary, metrics,
state, which checkpoint to serve). Imports the standard library, fileio and errors; torch, safetensors and
TensorBoard only inside the methods that need them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from fastcifar import fileio
from fastcifar.errors import FastCifarError
from fastcifar.fileio import (LOCK_FILE, DirLock, append_jsonl, atomic_file, first_missing, holds_nothing, parse_jsonl,
                              read_jsonl, remove_leftovers, write_bytes, write_json, write_jsonl, write_text)

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
# The best checkpoint of the last saved state's timeline, kept while a newer best has no state.pt yet: a run resumed
# from that state trains the newer epochs again (on a GPU not bit-identically) and must not lose the best it had.
PREVIOUS_BEST_FILE = "best.previous.safetensors"
# The key of the record (model.json's / best.json's content) inside a safetensors file's own header: the weights and
# the record that describes them are one file, written by one rename; the .json beside it is a copy for people and
# other tools, rewritten from it where a kill fell between the two writes.
RECORD_KEY = "fastcifar"
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
        self.was_empty = False  # `create` found the directory there and empty: what `discard` empties again
        self.lock: DirLock | None = None  # held from create/open to release: this process is the run's one writer

    @classmethod
    def create(cls, path: Path | str) -> "RunDir":
        """A new run, locked: the directory is created, or must hold nothing but what a killed start left (a lock
        or temp file). A user's run is never overwritten (an unfinished one is refused with the resume command, any
        other content with its own message); a path that cannot be a directory is one message."""
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            refuse_existing(run.path)
        run.created = first_missing(run.path)
        run.was_empty = run.created is None
        # Locked before it is judged: what it holds is then final, and a lock file a killed writer left (in a run
        # finished before the kill, say) goes when this refusal releases the lock.
        run.lock = DirLock(run.path, "the run directory").acquire()
        try:
            refuse_existing(run.path)
            run.clean()  # only now: in a folder of the user's, a name that looks like a temp file is still theirs
        except BaseException:
            run.release()
            raise
        return run

    @classmethod
    def open(cls, path: Path | str) -> "RunDir":
        """An existing run, locked for this process to continue it; what killed writes left is removed."""
        run = cls(path)
        run.lock = DirLock(run.path, "the run directory").acquire()
        run.clean()
        return run

    def clean(self) -> None:
        """Remove the temp files writes killed before their rename left (held under the lock: none is live)."""
        removed = remove_leftovers(self.path, foreign=True)
        if removed:
            print(f"{self.path}: removed {len(removed)} temp file(s) a killed write left ({', '.join(removed)})",
                  file=sys.stderr, flush=True)

    def release(self) -> None:
        """Drop the lock (the run's writer ends; also when it fails)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def discard(self) -> None:
        """Remove what `create` made (a run that failed before its first epoch leaves nothing): the directories it
        created, or, in a directory that was there and empty, the files it wrote; never what a user had."""
        import shutil

        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
        elif self.was_empty and self.path.is_dir():  # held under our lock since it was found empty: all ours
            for child in self.path.iterdir():
                if child.name == LOCK_FILE:
                    continue
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    fileio.remove(child)
        self.release()

    def remove(self) -> None:
        """Remove the whole directory (compare: what a setup that never trained left)."""
        import shutil

        shutil.rmtree(self.path, ignore_errors=True)

    # ------------------------------------------------------------------------------------------ records

    def write_config(self, config: dict) -> None:
        write_json(self.path / CONFIG_FILE, config)

    def write_env(self, env: dict, diff: str | None) -> None:
        """The git diff env.json hashes as git.diff when it is small (GIT_DIFF_KEEP_BYTES), then env.json: a run
        with env.json has its diff."""
        if diff and len(diff.encode()) <= GIT_DIFF_KEEP_BYTES:
            write_text(self.path / GIT_DIFF_FILE, diff)
        write_json(self.path / ENV_FILE, env)

    def has_env(self) -> bool:
        return (self.path / ENV_FILE).is_file()

    def append_metrics(self, metrics: dict, history: list[dict]) -> None:
        """One epoch: a line of metrics.jsonl and results.csv rewritten whole."""
        append_jsonl(self.path / METRICS_FILE, metrics)
        self._write_results_csv(history)

    def metrics_until(self, epoch: int) -> list[dict]:
        """metrics.jsonl's lines of epochs 1..`epoch` (what a run resumed after `epoch` keeps). A damaged line after
        them (a line cut or overwritten) is dropped with a line on stderr, as those epochs are trained again; one
        among them is one message."""
        rows, bad = parse_jsonl(self.path / METRICS_FILE)
        if bad is not None and len(rows) < epoch:
            raise FastCifarError(f"{self.path / METRICS_FILE} is damaged at line {bad + 1}, before the saved epoch "
                                 f"{epoch}: the run's history is lost there (restore the file, or start a new run)")
        if bad is not None:
            print(f"{self.path / METRICS_FILE}: dropped a damaged line after epoch {epoch}, the last saved one "
                  "(that epoch is trained again)", file=sys.stderr, flush=True)
        if [row.get("epoch") for row in rows[:epoch]] != list(range(1, epoch + 1)):
            raise FastCifarError(f"{self.path / METRICS_FILE} does not hold epochs 1..{epoch} in order, as its "
                                 f"state.pt (saved after epoch {epoch}) needs: restore it, or start a new run")
        return rows[:epoch]

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

        with atomic_file(self.path / STATE_FILE) as fh:
            torch.save(state, fh)

    def load_state(self, device) -> dict:
        import torch

        path = self.path / STATE_FILE
        try:
            return torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - corrupt or foreign file
            raise FastCifarError(f"cannot resume from {path}: unreadable ({type(exc).__name__})") from None

    def drop_state(self) -> None:
        fileio.remove(self.path / STATE_FILE)

    def save_weights(self, state: dict, meta: dict, checkpoint: str = "final") -> Path:
        """model.safetensors + model.json (or, for checkpoint "best", best.safetensors + best.json): the record
        travels inside the weights file (RECORD_KEY), so the two change together; the .json is its copy.

        The bytes are built in memory and written by fileio (safetensors' save_file would write through a temp file
        of its own naming, which a kill leaves behind, and fsync nothing)."""
        from safetensors.torch import save

        weights = self.path / CHECKPOINTS[checkpoint]
        write_bytes(weights, save(state, metadata={"format": "pt", RECORD_KEY: json.dumps(meta)}))
        write_json(meta_path(weights), meta)
        return weights

    def best_meta(self) -> dict | None:
        """The best-validation checkpoint's record (from inside best.safetensors; best.json for a run written before
        the record moved there), None when there is no best checkpoint or no whole record of it."""
        return _best_record(self.path / BEST_FILE)

    def previous_best_meta(self) -> dict | None:
        return _best_record(self.path / PREVIOUS_BEST_FILE)

    def keep_previous_best(self) -> None:
        """Move the best checkpoint aside before a newer one replaces it (see PREVIOUS_BEST_FILE)."""
        fileio.replace(self.path / BEST_FILE, self.path / PREVIOUS_BEST_FILE)

    def restore_previous_best(self) -> dict:
        """The kept best back in place, best.json rewritten from its record; returns the record."""
        fileio.replace(self.path / PREVIOUS_BEST_FILE, self.path / BEST_FILE)
        meta = self.best_meta()
        write_json(meta_path(self.path / BEST_FILE), meta)
        return meta

    def drop_previous_best(self) -> None:
        fileio.remove(self.path / PREVIOUS_BEST_FILE)

    def repair_best_json(self, meta: dict) -> bool:
        """best.json as the record inside best.safetensors says, when it says otherwise (a kill between the two
        writes, or a damaged file); True when it was rewritten."""
        path = meta_path(self.path / BEST_FILE)
        try:
            if json.loads(path.read_text()) == meta:
                return False
        except (OSError, ValueError):
            pass
        write_json(path, meta)
        return True

    def drop_best(self) -> None:
        fileio.remove(self.path / BEST_FILE)
        fileio.remove(meta_path(self.path / BEST_FILE))
        fileio.remove(self.path / PREVIOUS_BEST_FILE)

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
            from fastcifar.extras import install_command

            raise FastCifarError(f"--tensorboard needs the tensorboard package: {install_command('tensorboard')} "
                                 "(or pip install tensorboard)") from None
        return SummaryWriter(log_dir=str(Path(log_dir) if log_dir else self.path / TENSORBOARD_DIR))


def refuse_existing(path: Path) -> None:
    """Refuse a path a new run cannot start in, with the message that fits what is there: nothing (or only what a
    run killed before its config.json left) is fine."""
    if not path.exists():
        return
    if not path.is_dir():
        raise FastCifarError(f"{path} already exists and is a file, not a directory; choose another --out")
    if holds_nothing(path):
        return
    if (path / CONFIG_FILE).is_file():
        if is_finished(path):
            raise FastCifarError(f"{path} already exists and holds a finished run, which is never overwritten; "
                                 "choose another --out")
        raise FastCifarError(f"{path} already exists and holds an unfinished run; continue it with: fastcifar train "
                             f"--resume {path} (or choose another --out)")
    raise FastCifarError(f"{path} already exists and holds files that are not a fastcifar run's; choose another "
                         "--out")


def weights_record(weights: Path) -> dict | None:
    """The record saved inside a safetensors file's header (RECORD_KEY), None when it has none or cannot be read."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as handle:
            text = (handle.metadata() or {}).get(RECORD_KEY)
        record = json.loads(text) if text else None
    except Exception:  # noqa: BLE001 - a missing, cut or foreign file has no record
        return None
    return record if isinstance(record, dict) else None


def _best_record(weights: Path) -> dict | None:
    """A best checkpoint's record with what a resume needs (its epoch and metrics), None without one."""
    if not weights.is_file():
        return None
    record = weights_record(weights)
    if record is None and weights.name == BEST_FILE:  # written before the record moved into the weights file
        try:
            record = json.loads(meta_path(weights).read_text())
        except (OSError, ValueError):
            record = None
    if not isinstance(record, dict) or not isinstance(record.get("epoch"), int) \
            or not isinstance(record.get("metrics"), dict):
        return None
    return record


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
