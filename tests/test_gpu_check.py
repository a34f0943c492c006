"""bench/gpu_check.sh: the step shares and the time that flows between steps; --dry-run runs every step at toy sizes
on a CPU; a second check with the first one's sweep as earlier GPU results runs nothing again; a check stopped
inside its gpu-tests step keeps the record of every test that finished, and one stopped inside its sweep keeps every
finished step and run; bad arguments are one message."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from fastcifar.data.loaders import dali_available

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.sh"
# The dry run (the module fixture, counted in its first test) took 355 s on a 2-core EPYC beside other work and 349 s
# with a CPU-burning process as well; its own limit is run_check's 900 s, which setup.cfg's 600 s per test undercut.
pytestmark = pytest.mark.timeout(1200)
STEPS = ("setup", "gpu-tests", "sweep", "seed-preset", "bench", "export", "throughput", "loaders")
OUT_FILES = {"summary.md", "check.json", "env.json", "steps.jsonl", "setup.json", "gpu-tests.jsonl", "sweep.jsonl",
             "epochs.jsonl", "bench.jsonl", "export.jsonl", "throughput.jsonl", "loaders.jsonl", "work.tar.gz"}


def load_check():
    spec = importlib.util.spec_from_file_location("bench_gpu_check", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def env(**extra) -> dict:
    return {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE", **extra}


def run_check(*args: str, timeout: int = 900, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env(**extra),
                          timeout=timeout)


def step_rows(out: Path) -> dict[str, dict]:
    return {r["step"]: r for r in map(json.loads, (out / "steps.jsonl").read_text().splitlines())}


def test_step_shares_are_whole_and_in_order_of_value():
    check = load_check()
    assert tuple(s for s, _ in check.STEPS) == STEPS and sum(share for _, share in check.STEPS) == 100
    assert dict(check.STEPS)["sweep"] == max(share for _, share in check.STEPS)  # the recipe comes first
    assert "compare" not in dict(check.STEPS)  # stand-in weights make it meaningless there


def test_time_a_step_leaves_flows_to_the_steps_after_it(tmp_path):
    check = load_check()
    runner = check.Runner(None, 480.0, [s for s, _ in check.STEPS])
    planned = {s: int(480 * share / 100) for s, share in check.STEPS}
    assert runner.limit_for("setup") == planned["setup"]
    assert runner.limit_for("setup") + sum(planned[s] for s in STEPS[1:]) <= 480  # limits never exceed the budget
    runner.start -= 4  # setup used 4 of its 14 s: the 10 s left over spread over the later steps
    assert runner.limit_for("gpu-tests") > planned["gpu-tests"]
    runner.start -= 400  # when earlier steps overran, the later ones share what is left
    assert runner.limit_for("bench") < planned["bench"]
    assert runner.limit_for("loaders") == int(runner.left())  # the last step gets all of it
    runner.steps = ["setup", "loaders"]  # steps not asked for (--steps) do not hold time back
    assert runner.limit_for("setup") == int(runner.left() * 3 / 12)
    assert runner.limit_for("loaders") == int(runner.left())


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, synthetic_dir):
    out = tmp_path_factory.mktemp("gpu-check") / "out"
    proc = run_check("--dry-run", str(synthetic_dir), str(out), GPU_CHECK_PREVIOUS="")
    return out, proc


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_its_records(dry_run):
    out, proc = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == OUT_FILES
    summary = (out / "summary.md").read_text()
    assert summary in proc.stdout  # printed at the end too
    rows = step_rows(out)
    assert list(rows) == list(STEPS) and all(r["rc"] == 0 for r in rows.values()), summary
    # A step is given less than its share only when the steps before it used more than theirs, which depends on the
    # machine's speed: what the rows say the earlier steps used decides what this one may be given.
    used = planned = 0
    for r in rows.values():
        if used <= planned:
            assert r["limit_s"] >= r["planned_s"] * 0.9, rows
        used, planned = used + r["seconds"], planned + r["planned_s"]
    assert "Failed, cut, killed or skipped steps: none." in summary and "| step | exit | planned s | given s" in summary
    assert "Machine: no GPU" in summary and "Versions: python" in summary
    setup = json.loads((out / "setup.json").read_text())
    assert setup["missing"].keys() <= {"nvidia.dali"}  # nothing to install here
    assert "every module the check uses imports" in summary


@pytest.mark.slow
def test_dry_run_results_name_what_produced_each_figure(dry_run):
    out, _ = dry_run
    tests = [json.loads(line) for line in (out / "gpu-tests.jsonl").read_text().splitlines()]
    reports = [t for t in tests if t.get("$report_type") == "TestReport"]
    assert reports and all(t["outcome"] == "skipped" for t in reports if t["when"] == "setup")  # CPU: gpu tests skip
    sweep = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]
    # The plan's order: candidate, each lever alone, more seeds of the best (the best may change as seeds come in),
    # the best timed; then the seed preset (its own step). The sweep plans to fit its time, so how many of these a
    # machine measures depends on its speed: the assertions follow what the records say was run.
    stages = [r["stage"] for r in sweep]
    order = ["candidate", "levers", "seeds-of-best", "timed", "listed"]
    assert stages[0] == "candidate"  # the first run is always planned: the plan's own cost estimate fits
    assert [order.index(s) for s in stages] == sorted(order.index(s) for s in stages)
    sweep_runs = [r for r in sweep if r["stage"] != "listed"]
    for i, r in enumerate(sweep_runs):  # more seeds and the timed run are of a variant measured before them
        if r["stage"] == "seeds-of-best":
            assert r["seed"] == 1 and (r["variant"], 0) in {(e["variant"], e["seed"]) for e in sweep_runs[:i]}
        if r["stage"] == "timed":
            assert r["variant"].endswith("@timed") and r["variant"][:-len("@timed")] in \
                {e["variant"] for e in sweep_runs[:i]}
    listed = ["seed-preset"] if step_rows(out)["seed-preset"]["rc"] == 0 else []
    assert [r["variant"] for r in sweep if r["stage"] == "listed"] == listed
    if {"levers", "seeds-of-best", "timed"} - set(stages):  # a stage the sweep left out: it said none fit
        with tarfile.open(out / "work.tar.gz") as tar:
            log = tar.extractfile(next(n for n in tar.getnames() if n.endswith("sweep.log"))).read().decode()
        assert "did not fit the budget" in log, log[-2000:]
    for r in sweep:
        assert r["status"] == "finished" and r["loader"] == "tensor" and r["precision"] == "fp32"
        assert {"compile", "compile_record", "cudnn_benchmark", "machine", "levers", "seconds_to_target",
                "epoch1_train_loss", "wall_seconds"} <= set(r)
    epochs = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    for r in sweep:  # every measured run's two epochs
        assert sorted(e["epoch"] for e in epochs if (e["variant"], e["seed"]) == (r["variant"], r["seed"])) == [1, 2]
    bench = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines()]
    assert [r["label"] for r in bench] == ["torch", "torch:bf16"] and all(r["status"] == "ok" for r in bench)
    export = [json.loads(line) for line in (out / "export.jsonl").read_text().splitlines()]
    assert sorted(r["precision"] for r in export) == ["fp16", "fp32"] and all(r["passed"] for r in export)
    throughput = [json.loads(line) for line in (out / "throughput.jsonl").read_text().splitlines()]
    assert throughput and {"precision", "compile", "compile_mode", "cudnn_benchmark"} <= set(throughput[0])
    loaders = [json.loads(line) for line in (out / "loaders.jsonl").read_text().splitlines()]
    assert [r["loader"] for r in loaders] == ["tensor"] + (["dali"] if dali_available() else [])
    summary = (out / "summary.md").read_text()
    # each variant's row counts the runs its records hold (which variant gets more seeds depends on the CPU's
    # arithmetic: an AVX2-only EPYC chose "base", the development Xeon "levers"; how many fit, on its speed)
    variants = [r["variant"] for r in sweep]
    for variant in set(variants):
        assert f"| {variant} | {variants.count(variant)} |" in summary, summary
    assert "eager |" in summary
    assert "tensor loader, fp32, channels_last False" in summary
    assert "- bench torch:bf16 (bf16" in summary and "- loaders on cpu, batch 64" in summary
    assert re.search(r"- export seed\d \(fp32\)", summary), summary  # the best run's (its seed: as above)
    with tarfile.open(out / "work.tar.gz") as tar:
        names = tar.getnames()
        decode = [n for n in names if n.endswith("folder-decode.json")]
        if dali_available():  # the loaders step's second command
            rows = json.load(tar.extractfile(decode[0]))["rows"]
            assert set(rows) == {"cache-decode", "dali-files", "tensor", "dataloader"}
            assert all(r["images_per_s"] > 0 for r in rows.values()) and rows["dataloader"]["vs_dataloader"] == 1.0
    assert any(n.endswith("sweep.log") for n in names)
    assert not [n for n in names if n.endswith((".pt", ".safetensors", ".onnx", ".pth"))]  # no weights travel


@pytest.mark.slow
def test_a_second_check_skips_what_an_earlier_run_measured(dry_run, synthetic_dir, tmp_path):
    first, _ = dry_run
    out = tmp_path / "out"
    proc = run_check("--dry-run", str(synthetic_dir), str(out), "--steps", "sweep,seed-preset", "--previous",
                     str(first / "sweep.jsonl"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (out / "sweep.jsonl").exists()  # every run of both plans was in the earlier file
    rows = step_rows(out)
    assert list(rows) == ["sweep", "seed-preset"] and all(r["rc"] == 0 for r in rows.values())
    earlier = len((first / "sweep.jsonl").read_text().splitlines())
    assert f"{earlier} run(s) measured by earlier GPU runs (bench/results/gpu/) were not run again" in \
        (out / "summary.md").read_text()


SLOW_TESTS = '''
import time

def test_quick_one():
    assert True

def test_quick_two():
    assert 1 + 1 == 2

def test_slow():
    time.sleep(120)
'''


@pytest.mark.slow
def test_a_check_stopped_inside_the_gpu_tests_keeps_the_finished_tests(tmp_path, synthetic_dir):
    tests = tmp_path / "test_some.py"
    tests.write_text(SLOW_TESTS)
    out = tmp_path / "out"
    proc = subprocess.Popen(["bash", str(SCRIPT), "--dry-run", str(synthetic_dir), str(out), "--steps", "gpu-tests",
                             "--tests", str(tests)], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        record = out / "gpu-tests.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:  # stop it while test_slow sleeps
            if record.is_file() and "test_slow" in record.read_text():
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the check ended before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, stderr[-2000:]
    assert step_rows(out)["gpu-tests"]["rc"] == "killed"
    summary = (out / "summary.md").read_text()
    assert "- gpu tests: 2 passed, 0 failed" in summary and "passed: " in summary and "test_quick_two" in summary
    assert _processes_naming(out) == []


@pytest.mark.slow
def test_a_check_stopped_inside_its_sweep_keeps_every_finished_step(tmp_path, synthetic_dir):
    out = tmp_path / "out"
    proc = subprocess.Popen(["bash", str(SCRIPT), "--dry-run", str(synthetic_dir), str(out), "--steps",
                             "setup,sweep,bench"], env=env(GPU_CHECK_PREVIOUS=""), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 600
        sweep = out / "sweep.jsonl"
        while time.time() < deadline and proc.poll() is None:  # stop it inside the sweep, after its first run
            if sweep.is_file() and sweep.read_text().strip():
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the check ended before it could be stopped"
        proc.send_signal(signal.SIGTERM)  # to the check only: it must stop its running step itself
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, stderr[-2000:]
    lines = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]  # the step cut short
    assert 1 <= len(lines) <= 2 and all(r["status"] == "finished" for r in lines)  # keeps every run it finished
    rows = step_rows(out)
    assert rows["setup"]["rc"] == 0 and rows["sweep"]["rc"] in ("killed", 0)
    assert "bench" not in rows or rows["bench"]["rc"] == "killed"
    assert (out / "work.tar.gz").is_file() and "| sweep |" in (out / "summary.md").read_text()
    # Nothing of the check is left running: no process whose command line names its OUT_DIR (every step's does).
    deadline = time.time() + 15
    while time.time() < deadline and _processes_naming(out):
        time.sleep(0.5)
    assert not _processes_naming(out)


def _processes_naming(path: Path) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(str(path).encode() in a for a in args):
            found.append(cmdline.parent.name)
    return found


def test_bad_arguments_are_one_message(tmp_path, synthetic_dir):
    proc = run_check("--dry-run", str(synthetic_dir), timeout=30)
    assert proc.returncode == 2 and "usage:" in proc.stderr
    proc = run_check("--dry-run", str(tmp_path / "nowhere"), str(tmp_path / "o"), timeout=30)
    assert proc.returncode == 2 and "is not a directory" in proc.stderr
    proc = run_check("--dry-run", str(synthetic_dir), str(tmp_path / "o"), "--steps", "sweep,dance", timeout=30)
    assert proc.returncode == 2 and "unknown steps dance" in proc.stderr and not (tmp_path / "o").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("precious")
    proc = run_check("--dry-run", str(synthetic_dir), str(mine), timeout=30)
    assert proc.returncode == 2 and "not an empty directory" in proc.stderr
    assert [p.name for p in mine.iterdir()] == ["keep.txt"]


def test_the_summary_reads_per_file_junit_records_when_reportlog_is_missing(tmp_path):
    """Without pytest-reportlog the step runs one process per test file, each with its own JUnit file."""
    spec = importlib.util.spec_from_file_location("bench_summary", REPO / "bench" / "gpu_check_summary.py")
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    work = tmp_path / "work"
    work.mkdir()
    (work / "gpu-tests-test_gpu.xml").write_text(
        '<testsuites><testsuite><testcase classname="tests.test_gpu" name="test_a"/>'
        '<testcase classname="tests.test_gpu" name="test_b"><failure message="x"/></testcase></testsuite>'
        "</testsuites>")
    lines = summary.gpu_test_lines(tmp_path, work)
    assert lines[0] == "- gpu tests: 1 passed, 1 failed, 0 skipped"
    assert re.search(r"failed: tests.test_gpu::test_b", "\n".join(lines))
