"""bench/gpu_check.sh: step limits within the budget; --dry-run runs every step at toy sizes on a CPU and writes at
most 8 files; a check stopped mid-way keeps the results of every step finished before."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fastcifar.data.loaders import dali_available

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.sh"
OUT_FILES = {"summary.md", "gpu-tests.xml", "sweep.jsonl", "bench.jsonl", "export.json", "throughput.jsonl",
             "loaders.json", "work.tar.gz"}
STEPS = ("setup", "gpu-tests", "sweep", "bench", "export", "throughput", "seed-preset", "loaders")


def env() -> dict:
    return {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}


def run_check(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env(), timeout=timeout)


def step_rows(summary: str) -> dict[str, tuple[str, int]]:
    """{step: (exit, limit)} from summary.md's step table."""
    rows = {}
    for line in summary.splitlines():
        m = re.match(r"\| ([\w-]+) \| (\w+) \| \d+ \| (\d+) \|", line)
        if m:
            rows[m.group(1)] = (m.group(2), int(m.group(3)))
    return rows


def test_step_shares_add_up_to_the_budget_in_order_of_value():
    text = SCRIPT.read_text()
    steps = re.search(r"^steps=\((.*)\)", text, re.M).group(1).split()
    shares = [int(x) for x in re.search(r"^shares=\(([\d ]+)\)", text, re.M).group(1).split()]
    assert tuple(steps) == STEPS and len(shares) == len(steps) and sum(shares) <= 100
    assert "compare" not in steps  # stand-in weights make it meaningless there; it would crowd out the bench


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, synthetic_dir):
    out = tmp_path_factory.mktemp("gpu-check") / "out"
    proc = run_check("--dry-run", str(synthetic_dir), str(out))
    return out, proc


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_at_most_eight_files(dry_run):
    out, proc = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == OUT_FILES
    summary = (out / "summary.md").read_text()
    assert summary in proc.stdout  # printed at the end too
    rows = step_rows(summary)
    assert list(rows) == list(STEPS) and all(rc == "0" for rc, _ in rows.values()), summary
    assert sum(limit for _, limit in rows.values()) <= 480  # the limits fit the default budget
    assert "Failed, cut, killed or skipped steps: none." in summary
    assert "Machine: no GPU" in summary and "Versions: python" in summary


@pytest.mark.slow
def test_dry_run_results_name_what_produced_each_figure(dry_run):
    out, _ = dry_run
    tests = ET.parse(out / "gpu-tests.xml").getroot()
    cases = list(tests.iter("testcase"))
    assert cases and all(c.find("skipped") is not None for c in cases)  # on a CPU every gpu test skips
    sweep = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]
    assert [(r["variant"], r["seed"]) for r in sweep] == [("base", 0), ("levers", 0), ("seed-preset", 0)]
    for r in sweep:
        assert r["status"] == "finished" and r["loader"] == "tensor" and r["precision"] == "fp32"
        assert {"compile", "compile_mode", "cudnn_benchmark", "machine", "levers", "seconds_to_target"} <= set(r)
    bench = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines()]
    assert [r["label"] for r in bench] == ["torch", "torch:bf16"] and all(r["status"] == "ok" for r in bench)
    assert json.loads((out / "export.json").read_text())["onnx"][0]["parity"]["passed"]
    throughput = [json.loads(line) for line in (out / "throughput.jsonl").read_text().splitlines()]
    assert throughput and {"precision", "compile", "compile_mode", "cudnn_benchmark"} <= set(throughput[0])
    summary = (out / "summary.md").read_text()
    assert "| base | 1 |" in summary and "| seed-preset | 1 |" in summary
    assert "tensor loader, fp32, channels_last False, eager" in summary
    assert "- bench torch:bf16 (bf16" in summary and "- loaders on cpu, batch 64: tensor" in summary
    with tarfile.open(out / "work.tar.gz") as tar:
        names = tar.getnames()
        decode = [n for n in names if n.endswith("folder-decode.json")]
        if dali_available():  # the loaders step's second command
            rows = json.load(tar.extractfile(decode[0]))["rows"]
            assert set(rows) == {"cache-decode", "dali-files", "tensor", "dataloader"}
            assert all(r["images_per_s"] > 0 for r in rows.values()) and rows["dataloader"]["vs_dataloader"] == 1.0
    assert any(n.endswith("sweep.log") for n in names) and any(n.endswith("env.json") for n in names)
    assert not [n for n in names if n.endswith((".pt", ".safetensors", ".onnx", ".pth"))]  # no weights travel


@pytest.mark.slow
def test_a_check_stopped_mid_way_keeps_every_finished_step(tmp_path, synthetic_dir):
    out = tmp_path / "out"
    proc = subprocess.Popen(["bash", str(SCRIPT), "--dry-run", str(synthetic_dir), str(out)], env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 600
        sweep = out / "sweep.jsonl"
        while time.time() < deadline and proc.poll() is None:  # stop it inside the sweep, after its first run
            if sweep.is_file() and sweep.read_text().strip():
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the check ended before it could be stopped"
        proc.send_signal(signal.SIGTERM)  # to the script only: it must stop its running step itself
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, stderr[-2000:]
    ET.parse(out / "gpu-tests.xml")  # the step finished before: complete
    lines = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]  # the step cut short
    assert 1 <= len(lines) <= 2 and all(r["status"] == "finished" for r in lines)  # keeps every run it finished
    rows = step_rows((out / "summary.md").read_text())
    assert [rows[s][0] for s in STEPS[:2]] == ["0", "0"] and rows["sweep"][0] in ("killed", "0")
    later = [rc for step, (rc, _) in rows.items() if step not in STEPS[:3]]
    assert later in ([], ["killed"])  # the sweep was stopped, or (rarely) the step right after it
    assert (out / "work.tar.gz").is_file()
    for name in ("bench.jsonl", "throughput.jsonl"):  # whatever a stopped step wrote is whole
        if (out / name).exists():
            assert all(json.loads(line) for line in (out / name).read_text().splitlines())
    # Nothing of the check is left running: no process whose command line names its OUT_DIR (every step's does,
    # through --jsonl / --out; `timeout` gives each step its own process group, so a group check would miss them).
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
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("precious")
    proc = run_check("--dry-run", str(synthetic_dir), str(mine), timeout=30)
    assert proc.returncode == 2 and "not an empty directory" in proc.stderr
    assert [p.name for p in mine.iterdir()] == ["keep.txt"]
