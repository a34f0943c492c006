"""`compare --ray`: the study's runs as Ray tasks give the sequential study's records and report, survive a worker
killed mid-run, and Ctrl-C leaves no Ray or fastcifar process behind. One Ray cluster for the module (`ray start` on
127.0.0.1 in a temporary directory of its own, token authentication on), stopped and removed at the end."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from fastcifar.cli import cli
from fastcifar.serve.leftovers import descendants, is_running
from fastcifar.serve.triton_server import free_ports
from fastcifar.study.ray_runs import isolated_env

# setup.cfg's 600 s per test is too tight here: the record-for-record test took 191-206 s on a quiet 2-core EPYC and
# 446 s there beside a CPU-burning process and other work, and `make test` runs another module on the other core too.
# Past 600 s pytest-timeout's SIGALRM lands inside ray.wait, which Ray turned into the SystemError of issue 36
# (test_an_exception_a_signal_handler_raises_in_the_driver_stops_the_study_as_itself).
pytestmark = pytest.mark.timeout(1800)
RAY = Path(sys.executable).with_name("ray")
TIMING = re.compile(r"seconds|per_second|time_to|elapsed|^wall$|^created$")


def _processes() -> dict[int, str]:
    """pid -> command line of every process (/proc)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        out[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return out


def _tree(roots: set[int]) -> set[int]:
    """`roots` and every process below them."""
    return set(roots).union(*(descendants(pid) for pid in roots))


def _alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if is_running(pid)}


def _wait_gone(pids: set[int], seconds: float = 30.0) -> set[int]:
    deadline = time.monotonic() + seconds
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _alive(pids)


@pytest.fixture(scope="module")
def ray_cluster():
    temp = Path(tempfile.mkdtemp(prefix="fcray", dir="/tmp"))  # short: Ray's socket paths must fit 107 characters
    (temp / "token").write_text(secrets.token_hex(32))
    env = isolated_env(temp)
    (port,) = free_ports(1)
    shm = set(os.listdir("/dev/shm"))
    start = subprocess.run([str(RAY), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                            "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard=false", "--temp-dir", str(temp),
                            "--object-store-memory", str(100 * 2**20), "--disable-usage-stats"],
                           env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-3000:]
    try:
        with pytest.MonkeyPatch.context() as patch:  # the driver (this process) joins with the same settings
            for key, value in env.items():
                patch.setenv(key, value)
            yield {"address": f"127.0.0.1:{port}", "temp": temp}
    finally:
        # Stop this cluster only (`ray stop` would stop every Ray of this user): its processes name the directory,
        # the workers are their children. As `ray stop` does: SIGTERM, then SIGKILL for what is left (gcs_server
        # outlived 15 s of SIGTERM here).
        procs = _processes()
        ours = _tree({pid for pid, cmd in procs.items() if str(temp) in cmd})
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 15)):
            for pid in _alive(ours):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            left = _wait_gone(ours, wait)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, [procs.get(p) for p in left]
        assert set(os.listdir("/dev/shm")) <= shm, set(os.listdir("/dev/shm")) - shm


def _args(data_dir: Path, weights: Path, out: Path, *extra: str) -> list[str]:
    return ["compare", "--data-dir", str(data_dir), "--no-download", "--device", "cpu", "--loader", "tensor",
            "--preset", "smoke", "--stem", "imagenet", "--pretrained-weights", str(weights), "--out", str(out),
            *extra]


def _sequential(args: list[str]):
    """The compare in this process with the one torch thread each Ray task has (--cpus-per-run 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return CliRunner().invoke(cli, args)
    finally:
        torch.set_num_threads(threads)


def _strip(obj):
    """A record without what differs between two runs of the same computation: times and where files are."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not TIMING.search(k) and k not in ("out", "tensorboard_dir")}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _numbers_said(results: dict) -> str:
    """The conclusion without its sentences built from wall times (results.json names them): the time to 90 % and
    the busy-machine caveat say how loaded the machine was, which differs between two runs of the same study."""
    text = results["conclusion"]
    for sentence in results["conclusion_from_times"]:
        assert sentence in text, (sentence, text)
        text = text.replace(sentence, "")
    return " ".join(text.split())


def _same_runs(a: Path, b: Path) -> list[str]:
    names = sorted(p.name for p in (a / "runs").iterdir())
    assert names == sorted(p.name for p in (b / "runs").iterdir()) and names
    for name in names:
        x, y = a / "runs" / name, b / "runs" / name
        for file in ("summary.json", "config.json", "robustness.json"):
            if (x / file).exists() or (y / file).exists():
                assert _strip(json.loads((x / file).read_text())) == _strip(json.loads((y / file).read_text())), \
                    (name, file)
        metrics = [[_strip(json.loads(line)) for line in (d / "metrics.jsonl").read_text().splitlines()]
                   for d in (x, y)]
        assert metrics[0] == metrics[1], name
        wa, wb = load_file(str(x / "model.safetensors")), load_file(str(y / "model.safetensors"))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), f"{name}: other weights"
    return names


def test_ray_gives_the_sequential_records_and_report(tmp_path, ray_cluster, synthetic_dir, fake_weights):
    """8 runs and their robustness evaluations as Ray tasks on one CPU each: every run's records and weights, and
    the report's numbers, are those of the same compare run one after another with one thread."""
    grid = ["--train-limit", "200", "--epochs", "2", "--batch-size", "16", "--lr", "0.02", "--seeds", "2",
            "--fractions", "0.5,1.0", "--robustness-severities", "1"]
    sequential = _sequential(_args(synthetic_dir, fake_weights, tmp_path / "seq", *grid))
    assert sequential.exit_code == 0, sequential.output
    on_ray = CliRunner().invoke(cli, _args(synthetic_dir, fake_weights, tmp_path / "ray", *grid, "--ray",
                                           ray_cluster["address"], "--cpus-per-run", "1"))
    assert on_ray.exit_code == 0, on_ray.output
    assert re.search(r"finished \S+ on \S+:\d+: test acc", on_ray.output), on_ray.output
    assert re.search(r"ray: \d+ done, \d+ running \(.+ on .+\), \d+ waiting", on_ray.output), on_ray.output
    assert len(_same_runs(tmp_path / "seq", tmp_path / "ray")) == 8
    results = [json.loads((tmp_path / d / "results.json").read_text()) for d in ("seq", "ray")]
    for key in ("sections", "summary", "gaps", "runs", "labels", "test_set"):
        assert _strip(results[0][key]) == _strip(results[1][key]), key
    assert _numbers_said(results[0]) == _numbers_said(results[1])
    assert max(r["test_acc"] for r in results[1]["runs"]) > 0.2  # the runs learned: equal is not trivially equal


def test_ray_runs_every_axis_as_tasks(tmp_path, ray_cluster, synthetic_dir, fake_weights):
    """The linear probe, the scratch arm's longer schedule and label noise as Ray tasks (14 runs): the same runs,
    weights and study block as the compare one run after another."""
    grid = ["--train-limit", "100", "--epochs", "1", "--batch-size", "16", "--lr", "0.02", "--seeds", "2",
            "--fractions", "1.0", "--robustness-severities", "none", "--arms", "finetune,linear-probe,scratch",
            "--scratch-epochs", "1,2", "--label-noise", "0,0.5"]
    sequential = _sequential(_args(synthetic_dir, fake_weights, tmp_path / "seq", *grid))
    assert sequential.exit_code == 0, sequential.output
    on_ray = CliRunner().invoke(cli, _args(synthetic_dir, fake_weights, tmp_path / "ray", *grid, "--ray",
                                           ray_cluster["address"], "--cpus-per-run", "1"))
    assert on_ray.exit_code == 0, on_ray.output
    names = _same_runs(tmp_path / "seq", tmp_path / "ray")
    assert {"probe-f1-s0", "random-f1-s1-x2", "probe-f1-s1-n0.5"} <= set(names) and len(names) == 14
    results = [json.loads((tmp_path / d / "results.json").read_text()) for d in ("seq", "ray")]
    assert _strip(results[0]["study"]) == _strip(results[1]["study"])
    assert {g["pairing"] for g in results[1]["study"]["gaps"]} == {"verified"}


def test_a_worker_killed_mid_run_is_retried_and_the_study_completes(tmp_path, ray_cluster, synthetic_dir,
                                                                    fake_weights):
    """SIGKILL to a process running a training task once an epoch of some run is recorded: Ray retries the task,
    which resumes that run from its saved state (--out is shared here), and the study ends as if nothing happened."""
    grid = ["--train-limit", "500", "--epochs", "3", "--batch-size", "8", "--lr", "0.01", "--seeds", "1",
            "--fractions", "0.5,1.0", "--robustness-severities", "none"]
    out = tmp_path / "ray"
    killed: list[str] = []

    def kill_one_worker():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            if any((run / "metrics.jsonl").is_file() for run in out.glob("runs/*")):
                for pid, cmd in _processes().items():
                    if cmd.startswith("ray::train_task"):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(cmd)
                        return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    on_ray = CliRunner().invoke(cli, _args(synthetic_dir, fake_weights, out, *grid, "--ray", ray_cluster["address"],
                                           "--cpus-per-run", "1"))
    killer.join(timeout=5)
    assert killed, "no training task was seen running"
    assert on_ray.exit_code == 0, on_ray.output
    sequential = _sequential(_args(synthetic_dir, fake_weights, tmp_path / "seq", *grid))
    assert sequential.exit_code == 0, sequential.output
    assert len(_same_runs(tmp_path / "seq", out)) == 4


class _Deadline(BaseException):
    """What pytest-timeout raises from its SIGALRM handler when a test runs out of time: not an Exception, so
    neither CliRunner nor compare's own handlers catch it."""


def test_an_exception_a_signal_handler_raises_in_the_driver_stops_the_study_as_itself(tmp_path, ray_cluster,
                                                                                       synthetic_dir, fake_weights):
    """A signal handler in the driver that raises while compare waits on its Ray tasks (pytest-timeout's, on a busy
    machine): the exception comes out as itself and the tasks are cancelled. Ray returns it from its wait as
    `SystemError: <cyfunction CoreWorker.wait> returned a result with an exception set`, which CliRunner took for
    the study's own failure (issue 36: a `compare --ray` test failed so, its timeout hidden)."""
    grid = ["--train-limit", "500", "--epochs", "20", "--batch-size", "8", "--seeds", "1", "--fractions", "1.0",
            "--robustness-severities", "none"]
    sent: list[int] = []

    def out_of_time(signum, frame):
        raise _Deadline("the test's time is up")

    def signal_once_a_task_runs():  # the driver then waits in ray.wait (or reads the status line: ray.get)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not sent:
            if any(cmd.startswith("ray::train_task") for cmd in _processes().values()):
                os.kill(os.getpid(), signal.SIGUSR1)
                sent.append(signal.SIGUSR1)
            time.sleep(0.05)

    previous = signal.signal(signal.SIGUSR1, out_of_time)
    sender = threading.Thread(target=signal_once_a_task_runs, daemon=True)
    sender.start()
    try:
        with pytest.raises(_Deadline, match="time is up"):
            result = CliRunner().invoke(cli, _args(synthetic_dir, fake_weights, tmp_path / "ray", *grid, "--ray",
                                                   ray_cluster["address"], "--cpus-per-run", "1"))
            pytest.fail(f"the study ended without the handler's exception: {result.exception!r}\n"
                        f"{result.output[-2000:]}")
    finally:
        sender.join(timeout=5)
        signal.signal(signal.SIGUSR1, previous)
    assert sent, "no training task was seen running"
    deadline = time.monotonic() + 30  # cancelled, not left training on the cluster, which outlives the study
    while time.monotonic() < deadline and any(cmd.startswith("ray::train_task") for cmd in _processes().values()):
        time.sleep(0.2)
    assert not [cmd for cmd in _processes().values() if cmd.startswith("ray::train_task")]


def test_ctrl_c_cancels_the_tasks_and_leaves_no_process(tmp_path, synthetic_dir, fake_weights):
    """`compare --ray` with a local Ray of its own, Ctrl-C (SIGINT to the process group, as a terminal sends it) while
    tasks run: exit 130 with one message, and no Ray or fastcifar process is left."""
    temp = Path(tempfile.mkdtemp(prefix="fcray", dir="/tmp"))
    (temp / "token").write_text(secrets.token_hex(32))
    env = {**os.environ, **isolated_env(temp), "OMP_NUM_THREADS": "1"}
    args = _args(synthetic_dir, fake_weights, tmp_path / "ray", "--train-limit", "500", "--epochs", "20",
                 "--batch-size", "8", "--seeds", "1", "--fractions", "1.0", "--robustness-severities", "none", "--ray")
    proc = subprocess.Popen([sys.executable, "-m", "fastcifar", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not any(re.match(r"ray: \d+ done, [1-9]", line) for line in lines) and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, "".join(lines)[-3000:]
        procs = _processes()
        started = _tree({proc.pid} | {p for p, cmd in procs.items() if str(temp) in cmd})
        assert any("raylet" in procs.get(p, "") for p in started), "no local Ray was started"
        assert any(procs.get(p, "").startswith("ray::train_task") for p in started), "no task was running"
        os.killpg(proc.pid, signal.SIGINT)
        # 300 s, not 120: the whole suite beside a CPU burner (2026-12-07) once saw no exit within 120 s, which this
        # test alone beside 1-3 burners never reproduced (25-29 s); on a timeout the log says where it stood
        try:
            code = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            pytest.fail("no exit within 300 s of Ctrl-C; its log so far:\n" + "".join(lines)[-3000:])
        assert code == 130, "".join(lines)[-3000:]
        reader.join(timeout=10)
        output = "".join(lines)
        assert "interrupted; the Ray tasks were cancelled" in output and "Traceback" not in output, output[-3000:]
        left = _wait_gone(started - {proc.pid})
        assert not left, [procs.get(p) for p in left]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_failed_run_is_one_message_naming_it_and_the_other_tasks_stop(tmp_path, ray_cluster, synthetic_dir,
                                                                        fake_weights):
    """An lr-selection candidate that blows up (lr 1e4: a non-finite loss) while the other candidates still train:
    one Error line naming that run (no traceback), a non-zero exit, and no training task left running on the
    cluster, which outlives the study."""
    grid = ["--train-limit", "2000", "--epochs", "3", "--batch-size", "8", "--lr-grid", "0.01,10000", "--seeds", "1",
            "--fractions", "1.0", "--robustness-severities", "none"]
    on_ray = CliRunner().invoke(cli, _args(synthetic_dir, fake_weights, tmp_path / "ray", *grid, "--ray",
                                           ray_cluster["address"], "--cpus-per-run", "1"))
    assert on_ray.exit_code not in (0, 130), on_ray.output
    errors = [line for line in on_ray.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "lr10000" in errors[0] and "Traceback" not in on_ray.output, on_ray.output[-3000:]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(cmd.startswith("ray::train_task") for cmd in _processes().values()):
        time.sleep(0.2)
    assert not [cmd for cmd in _processes().values() if cmd.startswith("ray::train_task")]


def test_a_cluster_address_where_nothing_listens_is_one_message(tmp_path, synthetic_dir, fake_weights):
    """Ray itself retries such an address for minutes; compare says at once that nothing answers there."""
    (port,) = free_ports(1)
    result = CliRunner().invoke(cli, _args(synthetic_dir, fake_weights, tmp_path / "ray", "--ray",
                                           f"127.0.0.1:{port}"))
    assert result.exit_code == 1, result.output
    assert f"Error: compare --ray: nothing answers at 127.0.0.1:{port}" in result.output, result.output
    assert "ray start --head --port" in result.output and "Traceback" not in result.output
