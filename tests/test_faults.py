"""Faults a run directory, a compare report and an export folder survive (issue 37; docs/run-directory.md,
"Reliability"): a kill at every write, a full disk, a second writer, damaged files.

A kill is simulated in this process. Every file fastcifar writes becomes visible through one rename
(fileio.replace) and every removal of one goes through fileio.remove: `Faults` stops the work at the Nth of those
calls with `Killed`, a BaseException (no `except Exception` takes it). What a SIGKILL at that instant leaves on disk is
then put back: the folder as it was when the kill fired (hardlinked then), the complete temp file of the write it cut
included, so the cleanup a real kill never runs (finally blocks, a failed start's discard) hides nothing. The run is
then continued as a user would - the same command again, or --resume where that command says so - and must end
bit-identical to an uninterrupted run (CPU training is deterministic here, as tests/test_preemption.py relies on),
with no temp or lock file left.

A kill before the Nth rename leaves what a kill after the (N-1)th leaves plus that write's temp file, and a kill
before a removal what a kill after the previous call leaves: killing before every call, and after the last, reaches
every state a run directory can be left in.

A full disk is the kernel's own ENOSPC: the Nth write's file object is /dev/full (fileio._open_temp), so torch.save,
safetensors' bytes, onnx.save and matplotlib fail the way they do on a full disk; where this test may mount a tmpfs
(root), one real full disk too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from fastcifar import fileio
from fastcifar.cli import cli
from fastcifar.config import CompareConfig, TrainConfig
from fastcifar.errors import FastCifarError
from fastcifar.rundir import weights_record
from fastcifar.train import loop

TIMING = re.compile(r"seconds|per_second|time_to|elapsed|^wall$|^started$")
# Validation accuracy by epoch: both epochs improve, so the second best replaces the first (best.previous.*).
VAL = {1: 0.3, 2: 0.7}
# Every write point of a 2-epoch run, in order: what `Faults` counts (rename onto the file, or removal).
RUN_POINTS = [
    "replace config.json", "replace git.diff", "replace env.json", "replace state.pt",  # setup; state of epoch 0
    "replace metrics.jsonl", "replace results.csv", "replace best.safetensors", "replace best.json",  # epoch 1
    "replace state.pt",
    "replace metrics.jsonl", "replace results.csv", "replace best.previous.safetensors",  # epoch 2
    "replace best.safetensors", "replace best.json", "replace state.pt", "remove best.previous.safetensors",
    "replace model.safetensors", "replace model.json", "replace summary.json", "remove state.pt",  # finish
]
TRAIN_ARGS = ["--device", "cpu", "--loader", "tensor", "--no-download", "--preset", "smoke", "--stem", "imagenet",
              "--train-limit", "60", "--epochs", "2", "--batch-size", "16", "--lr", "0.05", "--warmup-epochs", "0.5",
              "--no-tta", "--seed", "0"]


class Killed(BaseException):
    """A simulated SIGKILL."""


def tree(root: Path, without: Path | None = None) -> dict[str, str]:
    """Every file under `root` (relative path -> sha256), `without` one."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p != without}


def leftovers(root: Path) -> list[str]:
    """Temp and lock files anywhere under `root`."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and
                  fileio.is_leftover(p.name, foreign=True))


class Faults:
    """Counts the write points under `root` and fires at one: a kill at point `kill` (before the call acts, or
    `after`), a full disk at the `full`-th write or the first write of the file `full` names (its file object is
    /dev/full); `skip(point)` exempts points."""

    def __init__(self, monkeypatch, root: Path, *, kill: int | None = None, after: bool = False,
                 full: int | str | None = None, skip=lambda point: False):
        self.root, self.kill, self.after, self.full, self.skip = Path(root), kill, after, full, skip
        self.points: list[str] = []
        self.writes = 0
        self.snapshot: Path | None = None
        self.before_full: dict | None = None  # the files just before the write that met the full disk
        real_replace, real_remove, real_open = fileio.replace, fileio.remove, fileio._open_temp

        def replace_(src, dest):
            self._point("replace", Path(dest), lambda: real_replace(src, dest))

        def remove_(path):
            self._point("remove", Path(path), lambda: real_remove(path))

        def open_temp(path):
            if self._under(Path(path)):
                self.writes += 1
                dest = Path(path).name[1:-len(".12345678.tmp")]  # mkstemp's ".<file>.<8 characters>.tmp"
                if self.full in (self.writes, dest):
                    self.full = None
                    self.before_full = tree(self.root, without=Path(path))
                    return open("/dev/full", "wb")
            return real_open(path)

        monkeypatch.setattr(fileio, "replace", replace_)
        monkeypatch.setattr(fileio, "remove", remove_)
        monkeypatch.setattr(fileio, "_open_temp", open_temp)

    def _under(self, path: Path) -> bool:
        return self.root == path or self.root in path.parents

    def _point(self, kind: str, path: Path, act) -> None:
        if not self._under(path):
            return act()
        point = f"{kind} {path.relative_to(self.root)}"
        if self.skip(point):
            return act()
        self.points.append(point)
        if len(self.points) - 1 != self.kill:
            return act()
        if self.after:
            act()
        self.snapshot = self.root.parent / f".killed-{self.root.name}"
        shutil.rmtree(self.snapshot, ignore_errors=True)
        if self.root.exists():
            shutil.copytree(self.root, self.snapshot, copy_function=os.link)
        raise Killed(point)

    def restore(self) -> None:
        """The disk as the kill left it; later points pass."""
        self.kill = None
        shutil.rmtree(self.root, ignore_errors=True)
        if self.snapshot.exists():
            shutil.copytree(self.snapshot, self.root, copy_function=os.link)
            shutil.rmtree(self.snapshot)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from fastcifar.data.synthetic import write_synthetic_cifar

    root = tmp_path_factory.mktemp("faults-data")
    write_synthetic_cifar(root, n_train=80, n_test=40, seed=0)
    return root


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Many short trainings in one process: one thread is faster on a loaded 2-core machine and no less exact.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _script(monkeypatch) -> None:
    """VAL as the validation accuracy, and a fixed git diff (env.json and git.diff are then written every time)."""
    real = loop.evaluate

    def evaluate(s, last=False):
        metrics = real(s, last)
        if metrics.get("val_acc") is not None:
            metrics["val_acc"] = VAL[min(len(s.history) + 1, s.cfg.epochs)]
        return metrics

    monkeypatch.setattr(loop, "evaluate", evaluate)
    monkeypatch.setattr("fastcifar.runtime.git_diff", lambda *args, **kwargs: "diff --git a/x b/x\n")


@pytest.fixture()
def scripted(monkeypatch):
    _script(monkeypatch)


def run_cfg(data: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(data_dir=str(data), out=str(out), stem="imagenet", epochs=2, batch_size=16, lr=0.05,
                                 warmup_epochs=0.5, device="cpu", loader="tensor", download=False, train_limit=60,
                                 tta=False, seed=0), **kw})


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data) -> dict:
    """An uninterrupted run, and the write points it passed."""
    out = tmp_path_factory.mktemp("reference") / "run"
    with pytest.MonkeyPatch.context() as mp:
        _script(mp)
        faults = Faults(mp, out)
        loop.train(run_cfg(data, out), progress=False)
    return {"out": out, "points": faults.points}


def strip(obj):
    """A record without what differs between two runs of the same computation: times and where the run is."""
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if not TIMING.search(k) and k not in ("out", "tensorboard_dir")}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj


def assert_same_run(out: Path, ref: Path, extra: tuple[str, ...] = (), without: tuple[str, ...] = ()) -> None:
    """`out` ends as the uninterrupted `ref` did, bit for bit, but for `extra` files and summary.json's `without`."""
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in ref.iterdir()] + list(extra))
    for name in ("model.safetensors", "best.safetensors"):
        a, b = load_file(str(out / name)), load_file(str(ref / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} differs"
        assert weights_record(out / name) == weights_record(ref / name)
    for name in ("config.json", "model.json", "best.json", "summary.json"):
        a, b = (strip(json.loads((d / name).read_text())) for d in (out, ref))
        if name == "summary.json":
            a, b = ({k: v for k, v in d.items() if k not in without} for d in (a, b))
        assert a == b, name
    lines = [[strip(json.loads(line)) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (out, ref)]
    assert lines[0] == lines[1]
    assert leftovers(out) == []


def same_command(cfg: TrainConfig) -> str:
    """What a user does after a kill: the same command again, then --resume where it says so. Returns how."""
    out = Path(cfg.out)
    try:
        loop.train(cfg, progress=False)
        return "restarted"
    except FastCifarError as exc:
        if "holds a finished run" in str(exc):
            return "finished"
        assert f"fastcifar train --resume {out}" in str(exc), exc
    loop.resume(out, progress=False)
    return "resumed"


def error_lines(output: str) -> list[str]:
    assert "Traceback" not in output, output[-3000:]
    return [line for line in output.splitlines() if line.startswith("Error:")]


# ---------------------------------------------------------------------------------------------- kills


def test_the_write_points_of_a_run(reference):
    assert reference["points"] == RUN_POINTS


# Before every point, and after the last (a kill after point k leaves what one before point k+1 leaves, less its
# temp file).
KILLS = [(k, "before") for k in range(len(RUN_POINTS))] + [(len(RUN_POINTS) - 1, "after")]


@pytest.mark.slow
@pytest.mark.parametrize("k, when", KILLS, ids=[f"{when}-{k:02d}-{RUN_POINTS[k].replace(' ', '-')}"
                                                for k, when in KILLS])
def test_a_kill_at_every_write_point_resumes_bit_identical(k, when, tmp_path, data, reference, scripted,
                                                          monkeypatch):
    out = tmp_path / "run"
    cfg = run_cfg(data, out)
    faults = Faults(monkeypatch, out, kill=k, after=when == "after")
    with pytest.raises(Killed):
        loop.train(cfg, progress=False)
    faults.restore()
    if when == "before" and RUN_POINTS[k].startswith("replace") and "previous" not in RUN_POINTS[k]:
        assert [n for n in leftovers(out) if n.endswith(".tmp")], "a kill before a rename leaves its temp file"
    how = same_command(cfg)
    assert how == ("restarted" if k == 0 else "finished" if k >= RUN_POINTS.index("replace summary.json") + 1
                   else "resumed"), how
    # Killed after summary.json, before state.pt's removal: the finished run keeps state.pt, as --keep-state does.
    # Killed after config.json, before the first state.pt: --resume trains it from epoch 1 with that config, whose
    # batch is already fitted to the small data, so the summary cannot repeat the note of that fit (small_data).
    no_state = 0 < k <= RUN_POINTS.index("replace state.pt")
    assert_same_run(out, reference["out"], extra=("state.pt",) if (how, when) == ("finished", "before") else (),
                    without=("small_data",) if no_state else ())


# ---------------------------------------------------------------------------------------------- full disk


FIRST_WRITES = [i for i, point in enumerate(RUN_POINTS) if point.startswith("replace") and point not in RUN_POINTS[:i]
                and "previous" not in point]


@pytest.mark.parametrize("n", range(len(FIRST_WRITES)))
def test_a_full_disk_at_each_kind_of_write_is_one_message(n, tmp_path, data, scripted, monkeypatch):
    """ENOSPC from the kernel at the first write of each file: one Error line naming the disk and the file, exit 1,
    the run directory exactly as it was before that write (the last saved epoch whole), no temp or lock file. A run
    that fails before its first epoch leaves the --out that existed as it was: empty."""
    point = RUN_POINTS[FIRST_WRITES[n]]
    nth_write = [p for p in RUN_POINTS[:FIRST_WRITES[n] + 1] if p.startswith("replace") and "previous" not in p]
    out = tmp_path / "run"
    out.mkdir()
    faults = Faults(monkeypatch, out, full=len(nth_write))
    result = CliRunner().invoke(cli, ["train", "--data-dir", str(data), "--out", str(out), *TRAIN_ARGS])
    assert result.exit_code == 1, result.output
    (line,) = error_lines(result.output)
    name = point.split()[1]
    assert "no space left on the disk holding" in line and f"while writing {name}" in line, line
    saved = RUN_POINTS[:FIRST_WRITES[n]].count("replace state.pt")  # the states written before it
    if saved:
        assert tree(out) == {k: v for k, v in faults.before_full.items() if k != fileio.LOCK_FILE}
        assert f"continue it with: fastcifar train --resume {out}" in line
        state = torch.load(out / "state.pt", weights_only=True)  # the last good checkpoint, whole
        assert state["epoch"] == saved - 1
    else:
        assert list(out.iterdir()) == [] and "run the same command again" in line


def test_full_disk_errors_as_the_libraries_raise_them_are_one_message(tmp_path, monkeypatch):
    """torch.save to a path fails on a full disk with '[enforce fail at inline_container.cc...]' (here from
    /dev/full itself), safetensors' save_file with this SafetensorError (recorded on a full 64 KiB tmpfs,
    safetensors 0.8.0): inside a write each is one message naming the disk and the file."""
    from safetensors import SafetensorError

    dest = tmp_path / "weights.pt"
    monkeypatch.setattr(fileio, "LOW_SPACE", 0)  # as on a disk with space: torch's text names no cause
    with pytest.raises(FastCifarError, match=r"cannot write .*weights.pt: the write failed \(\[enforce fail"):
        with fileio.atomic_path(dest):
            torch.save({"x": torch.zeros(1000)}, "/dev/full")
    monkeypatch.setattr(fileio, "LOW_SPACE", 2**62)  # as on a full disk, which the real one below meets
    with pytest.raises(FastCifarError, match="no space left on the disk holding .* while writing weights.pt"):
        with fileio.atomic_path(dest):
            torch.save({"x": torch.zeros(1000)}, "/dev/full")
    with pytest.raises(FastCifarError, match="no space left on the disk holding .* while writing weights.pt"):
        with fileio.atomic_path(dest):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert not dest.exists() and leftovers(tmp_path) == []


def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    where.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_real_full_disk(tmp_path, data):
    """A 100 MiB tmpfs: epoch 0's state.pt (45 MB: SGD makes its momentum at the first step) and epoch 1's best
    weights (45 MB) fit, epoch 1's state.pt (90 MB) does not - and torch.save says so in its own words."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "100m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = disk / "run"
        result = subprocess.run([sys.executable, "-m", "fastcifar", "train", "--data-dir", str(data), "--out",
                                 str(out), *TRAIN_ARGS], capture_output=True, text=True, timeout=600)
        assert result.returncode == 1, result.stderr[-3000:]
        (line,) = error_lines(result.stderr)
        assert "no space left on the disk holding" in line and "--resume" in line, line
        assert torch.load(out / "state.pt", weights_only=True)["epoch"] == 0
        assert leftovers(out) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ---------------------------------------------------------------------------------------------- two writers


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 600
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), proc.communicate()[1][-3000:]


@pytest.mark.slow
def test_a_second_writer_gets_one_message_naming_the_first_and_a_dead_ones_lock_is_taken_over(tmp_path, data):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fastcifar", "train", "--data-dir", str(data), "--out", str(out), *TRAIN_ARGS]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(out / "config.json", first)
        first.send_signal(signal.SIGSTOP)  # holds its lock, stopped: the second writer cannot slip past it
        for args in (["--data-dir", str(data), "--out", str(out), *TRAIN_ARGS], ["--resume", str(out)]):
            result = CliRunner().invoke(cli, ["train", *args])
            assert result.exit_code == 1, result.output
            (line,) = error_lines(result.output)
            assert f"{out} is in use by another fastcifar process (PID {first.pid})" in line, line
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=600)
        assert first.returncode == 0, err[-3000:]
    finally:
        first.kill()
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert not (out / fileio.LOCK_FILE).exists()

    # A writer killed outright leaves its lock file; the kernel dropped its flock, so the next one takes it over.
    stale = tmp_path / "stale"
    dead = subprocess.Popen([*cmd[:cmd.index("--out") + 1], str(stale), *TRAIN_ARGS], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(stale / "config.json", dead)
    dead.kill()
    dead.communicate(timeout=60)
    assert (stale / fileio.LOCK_FILE).read_text().strip() == str(dead.pid)
    result = CliRunner().invoke(cli, ["train", "--resume", str(stale)])
    assert result.exit_code == 0, result.output
    assert (stale / "summary.json").is_file() and leftovers(stale) == []


def test_a_second_compare_gets_one_message_naming_the_first(tmp_path, data):
    out = tmp_path / "report"
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from fastcifar.fileio import DirLock; "
                               f"DirLock({str(out)!r}).acquire(); print('locked', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = CliRunner().invoke(cli, ["compare", "--data-dir", str(data), "--out", str(out), "--device", "cpu",
                                          "--preset", "smoke", "--seeds", "1", "--fractions", "1.0",
                                          "--if-no-weights", "stand-in"])
        assert result.exit_code == 1, result.output
        (line,) = error_lines(result.output)
        assert f"{out} is in use by another fastcifar process (PID {holder.pid})" in line, line
    finally:
        holder.kill()
        holder.communicate()


# ---------------------------------------------------------------------------------------------- damaged files


@pytest.fixture()
def interrupted(tmp_path, data, scripted) -> Path:
    """A run stopped (Ctrl-C) after epoch 1: its state.pt holds epoch 1."""
    out = tmp_path / "run"

    def stop(epoch, metrics):
        raise KeyboardInterrupt

    with pytest.raises(FastCifarError, match="interrupted"):
        loop.train(run_cfg(data, out), progress=False, on_epoch_end=stop)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["cut", "garbage"])
def test_a_damaged_last_metrics_line_is_dropped_with_a_message(damage, interrupted, reference):
    with (interrupted / "metrics.jsonl").open("ab") as f:
        f.write(b'{"epoch": 2, "train_lo' if damage == "cut" else b"\x00\xff\xfe garbage\n")
    result = CliRunner().invoke(cli, ["train", "--resume", str(interrupted)])
    assert result.exit_code == 0, result.output
    assert result.output.count("dropped a damaged line after epoch 1") == 1, result.output
    assert_same_run(interrupted, reference["out"])


def test_a_damaged_metrics_line_before_the_saved_epoch_is_one_message(interrupted):
    (interrupted / "metrics.jsonl").write_text('{"epoch": 1, "train_l\n')
    result = CliRunner().invoke(cli, ["train", "--resume", str(interrupted)])
    assert result.exit_code == 1
    (line,) = error_lines(result.output)
    assert "metrics.jsonl is damaged at line 1, before the saved epoch 1" in line, line


def _without_record(weights: Path) -> None:
    """`weights` as fastcifar wrote it before the record moved into the weights file."""
    save_file(load_file(str(weights)), str(weights), metadata={"format": "pt"})
    assert weights_record(weights) is None


@pytest.mark.slow
def test_damaged_best_json_and_model_json(tmp_path, interrupted, reference, data):
    # best.json `{}` in an interrupted run: rewritten from the record inside best.safetensors, said once.
    (interrupted / "best.json").write_text("{}")
    result = CliRunner().invoke(cli, ["train", "--resume", str(interrupted)])
    assert result.exit_code == 0, result.output
    assert result.output.count("best.json: rewritten from the record inside best.safetensors") == 1
    assert_same_run(interrupted, reference["out"])

    # Serving: best.json `{}` and model.json `[]` do not matter while the weights carry their record...
    run = tmp_path / "copy"
    shutil.copytree(reference["out"], run)
    (run / "best.json").write_text("{}")
    (run / "model.json").write_text("[]")
    image = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (120, 30, 200)).save(image)
    for args in ([str(run)], [str(run), "--checkpoint", "best"]):
        result = CliRunner().invoke(cli, ["predict", *args, str(image), "--device", "cpu", "--json"])
        assert result.exit_code == 0, result.output
    # ...and are one message each where they do not (files from before the record moved into the weights).
    _without_record(run / "model.safetensors")
    _without_record(run / "best.safetensors")
    for args, file in (([str(run)], "model.json"), ([str(run), "--checkpoint", "best"], "best.json")):
        result = CliRunner().invoke(cli, ["predict", *args, str(image), "--device", "cpu"])
        assert result.exit_code == 1
        (line,) = error_lines(result.output)
        assert file in line, line
    result = CliRunner().invoke(cli, ["export", str(run), "--out", str(tmp_path / "exported"), "--data-dir",
                                      str(data)])
    assert result.exit_code == 1
    (line,) = error_lines(result.output)
    assert "model.json is damaged" in line and not (tmp_path / "exported").exists(), line


def test_a_damaged_best_json_without_a_record_stops_a_resume_with_one_message(interrupted):
    _without_record(interrupted / "best.safetensors")
    (interrupted / "best.json").write_text("{}")
    before = tree(interrupted)
    result = CliRunner().invoke(cli, ["train", "--resume", str(interrupted)])
    assert result.exit_code == 1
    (line,) = error_lines(result.output)
    assert "best.json is damaged and best.safetensors carries no record" in line, line
    assert tree(interrupted) == before  # the user's weights are kept


# ---------------------------------------------------------------------------------------------- dead ends


def test_a_run_killed_before_its_first_state_resumes_and_other_outs_are_not_sent_to_resume(tmp_path, data, scripted,
                                                                                             monkeypatch):
    # The dead end of issue 37: config.json and env.json, no state.pt. --resume trains it from epoch 1.
    out = tmp_path / "run"
    faults = Faults(monkeypatch, out, kill=RUN_POINTS.index("replace state.pt"))
    with pytest.raises(Killed):
        loop.train(run_cfg(data, out, epochs=1), progress=False)
    faults.restore()
    result = CliRunner().invoke(cli, ["train", "--data-dir", str(data), "--out", str(out), *TRAIN_ARGS])
    assert result.exit_code == 1 and f"continue it with: fastcifar train --resume {out}" in result.output
    result = CliRunner().invoke(cli, ["train", "--resume", str(out)])
    assert result.exit_code == 0, result.output
    assert "has no state.pt" in result.output and (out / "summary.json").is_file() and leftovers(out) == []

    # A --out that is a file, or holds other files: messages that do not send the user to --resume.
    (tmp_path / "file").write_text("mine")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    for where, says in (("file", "is a file, not a directory"), ("other", "holds files that are not a fastcifar")):
        result = CliRunner().invoke(cli, ["train", "--data-dir", str(data), "--out", str(tmp_path / where),
                                          *TRAIN_ARGS])
        assert result.exit_code == 1
        (line,) = error_lines(result.output)
        assert says in line and "--resume" not in line, line
    result = CliRunner().invoke(cli, ["compare", "--data-dir", str(data), "--out", str(tmp_path / "file"),
                                      "--device", "cpu", "--preset", "smoke", "--if-no-weights", "stand-in"])
    assert result.exit_code == 2  # click's own check of the option (file_okay=False): a usage error
    (line,) = error_lines(result.output)
    assert "is a file" in line and "--resume" not in line, line
    assert (tmp_path / "file").read_text() == "mine" and (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_temp_files_killed_writes_left_are_removed_when_the_run_is_opened(interrupted):
    # ours (a state.pt cut before its rename) and safetensors 0.8's own, from a run its save_file wrote
    (interrupted / ".state.pt.abcd1234.tmp").write_bytes(b"x" * 1000)
    (interrupted / ".tmpAb12Cd").write_bytes(b"x" * 1000)
    from fastcifar.rundir import RunDir

    RunDir.open(interrupted).release()
    assert leftovers(interrupted) == []


# ---------------------------------------------------------------------------------------------- compare's report


def report_args(data: Path, weights: Path, out: Path) -> list[str]:
    """A study of two one-epoch runs (one per arm) on 36 images, without the robustness pass."""
    return ["compare", "--data-dir", str(data), "--out", str(out), "--device", "cpu", "--loader", "tensor",
            "--no-download", "--preset", "smoke", "--stem", "imagenet", "--train-limit", "40", "--epochs", "1",
            "--batch-size", "16", "--lr", "0.05", "--warmup-epochs", "0.5", "--no-tta", "--seeds", "1",
            "--fractions", "1.0", "--robustness-severities", "none", "--pretrained-weights", str(weights)]


def _same_report(out: Path, ref: Path) -> None:
    a, b = (json.loads((d / "results.json").read_text()) for d in (out, ref))
    assert strip(a["runs"]) == strip(b["runs"]) and strip(a["gaps"]) == strip(b["gaps"])
    for run in (ref / "runs").iterdir():
        x, y = load_file(str(out / "runs" / run.name / "model.safetensors")), load_file(str(run / "model.safetensors"))
        assert all(torch.equal(x[k], y[k]) for k in y), run.name
    assert {p.name for p in out.iterdir()} == {p.name for p in ref.iterdir()}
    assert leftovers(out) == []


@pytest.fixture(scope="module")
def report(tmp_path_factory, data, fake_weights) -> dict:
    out = tmp_path_factory.mktemp("report-reference") / "report"
    with pytest.MonkeyPatch.context() as mp:
        faults = Faults(mp, out, skip=lambda point: "/" in point)
        result = CliRunner().invoke(cli, report_args(data, fake_weights, out))
    assert result.exit_code == 0, result.output
    return {"out": out, "points": faults.points}


@pytest.mark.slow
def test_compare_killed_at_every_write_of_its_report_continues_to_the_same_report(tmp_path, data, fake_weights,
                                                                                   report, monkeypatch):
    """Each invocation is killed at the first report write (the runs' own are the run directory's, above) that no
    earlier one was killed at - the nth write of a file in that invocation - until one finishes."""
    from fastcifar.study.compare import compare

    out = tmp_path / "report"
    cfg = replace(CompareConfig.load(report["out"] / "compare.json"), out=str(out))
    tried: set[tuple[str, int]] = set()
    invocations = 0
    while True:
        invocations += 1
        with monkeypatch.context() as mp:
            seen: dict[str, int] = {}
            target = {}

            def skip(point):  # runs' own writes pass; each report write once
                # The removal of what an earlier kill left (a random temp name) repeats that cleanup when cut.
                if "/" in point or fileio.is_leftover(point.split()[1]):
                    return True
                key = (point, seen.get(point, 0))
                seen[point] = key[1] + 1
                if key in tried or target:
                    return True
                target["key"] = key
                return False

            faults = Faults(mp, out, kill=0, skip=skip)
            try:
                compare(cfg, progress=False)
                break
            except Killed:
                tried.add(target["key"])
                faults.restore()
    assert {point for point, _ in tried} == set(report["points"]) and invocations == len(tried) + 1
    print(f"{len(tried)} kills: {sorted(tried)}")  # docs/run-directory.md, "Reliability", counts them
    _same_report(out, report["out"])
    wall = json.loads((out / "results.json").read_text())["wall"]
    # every run trained once, the killed invocations that had started counted too
    assert wall["trained"] == 2 and wall["reused"] == 0 and wall["invocations"] >= 2, wall


def test_compare_report_full_disk_and_damaged_files_are_one_message(tmp_path, data, fake_weights, report,
                                                                    monkeypatch):
    from fastcifar.study.compare import SIZING_FILE, fit_to_budget

    out = tmp_path / "report"
    shutil.copytree(report["out"], out)
    args = report_args(data, fake_weights, out)  # a rerun of the finished study: nothing to train
    before = tree(out)
    with monkeypatch.context() as mp:
        Faults(mp, out, full="compare.json")  # the first write of a rerun
        result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    (line,) = error_lines(result.output)
    assert "no space left on the disk holding" in line and "while writing compare.json" in line, line
    assert tree(out) == before
    with monkeypatch.context() as mp:
        faults = Faults(mp, out, full="results.json")
        result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    (line,) = error_lines(result.output)
    assert "while writing results.json" in line, line
    assert tree(out)["results.json"] == before["results.json"] and leftovers(out) == []
    assert faults.before_full["results.json"] == before["results.json"]

    for name, text in (("pretrained.json", "{"), ("invocations.json", "[]")):
        damaged = tmp_path / f"damaged-{name}"
        shutil.copytree(out, damaged)
        (damaged / name).write_text(text)
        result = CliRunner().invoke(cli, report_args(data, fake_weights, damaged))
        assert result.exit_code == 1
        (line,) = error_lines(result.output)
        assert f"{damaged / name} is damaged" in line, line
    (out / SIZING_FILE).write_text('{"pool": ')
    cfg = replace(CompareConfig.load(out / "compare.json"), out=str(out), time_budget_s=60.0)
    with pytest.raises(FastCifarError, match=f"{out / SIZING_FILE} is damaged"):
        fit_to_budget(cfg, 40, 40, log=print)


def test_the_stand_in_weights_have_one_sha256(tmp_path, data):
    from fastcifar.study.pretrained import _stand_in

    cfg = CompareConfig(base=run_cfg(data, tmp_path))
    records = []
    for name in ("a", "b"):  # two reports of the same study: the same weights, the same recorded sha256
        (tmp_path / name).mkdir()
        records.append(_stand_in(cfg, tmp_path / name))
    assert records[0]["sha256"] == records[1]["sha256"] == fileio.file_digest(tmp_path / "a" / "stand-in.pth")


# ---------------------------------------------------------------------------------------------- export's folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model_dir, data) -> dict:
    from fastcifar.export import export_model

    out = tmp_path_factory.mktemp("export-reference") / "exported"
    with pytest.MonkeyPatch.context() as mp:
        faults = Faults(mp, out)
        export_model(tiny_model_dir, out_dir=out, data_dir=data, max_images=8)
    return {"out": out, "points": faults.points}


EXPORT_POINTS = ["remove resnet18-random.parity.json", "replace resnet18-random.onnx",
                 "replace resnet18-random.parity.json"]


@pytest.mark.slow
@pytest.mark.parametrize("k", range(len(EXPORT_POINTS) + 1))
def test_export_killed_at_each_write_is_exported_again_the_same(k, tmp_path, tiny_model_dir, data, exported,
                                                                 monkeypatch):
    from fastcifar.export import export_model

    assert exported["points"] == EXPORT_POINTS
    out = tmp_path / "exported"
    last = k == len(EXPORT_POINTS)
    with monkeypatch.context() as mp:
        faults = Faults(mp, out, kill=k - 1 if last else k, after=last)
        with pytest.raises(Killed):
            export_model(tiny_model_dir, out_dir=out, data_dir=data, max_images=8)
        faults.restore()
    export_model(tiny_model_dir, out_dir=out, data_dir=data, max_images=8)
    assert tree(out).keys() == tree(exported["out"]).keys() and leftovers(out) == []
    assert (out / "resnet18-random.onnx").read_bytes() == (exported["out"] / "resnet18-random.onnx").read_bytes()
    assert strip(json.loads((out / "resnet18-random.parity.json").read_text())) == \
        strip(json.loads((exported["out"] / "resnet18-random.parity.json").read_text()))


def test_export_full_disk_is_one_message_and_the_last_export_stays(tmp_path, tiny_model_dir, data, exported,
                                                                   monkeypatch):
    out = tmp_path / "exported"
    shutil.copytree(exported["out"], out)
    before = tree(out)
    for full, name in ((1, "resnet18-random.onnx"), (2, "resnet18-random.parity.json")):
        with monkeypatch.context() as mp:
            Faults(mp, out, full=full)
            result = CliRunner().invoke(cli, ["export", str(tiny_model_dir), "--out", str(out), "--data-dir",
                                              str(data), "--verify-images", "8"])
        assert result.exit_code == 1
        (line,) = error_lines(result.output)
        assert "no space left on the disk holding" in line and f"while writing {name}" in line, line
        assert leftovers(out) == []
        if full == 1:
            assert tree(out) == before  # the earlier export, as it was
    # a temp file a killed export left is removed by the next export of that model, another model's is not
    (out / ".resnet18-random.onnx.abcd1234.tmp").write_bytes(b"x")
    (out / ".resnet18-random-best.onnx.abcd1234.tmp").write_bytes(b"x")
    result = CliRunner().invoke(cli, ["export", str(tiny_model_dir), "--out", str(out), "--data-dir", str(data),
                                      "--verify-images", "8"])
    assert result.exit_code == 0, result.output
    assert leftovers(out) == [".resnet18-random-best.onnx.abcd1234.tmp"]
