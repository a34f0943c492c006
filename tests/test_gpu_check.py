"""bench/gpu_check.sh --dry-run: the prepared GPU check runs every step at toy sizes on a CPU and writes its files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"
OUT_FILES = {"summary.md", "tta-fast.json", "tta-seed.json", "compare-results.json", "train-throughput.json",
             "export.json", "bench.json", "work.tar.gz"}


def run_check(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_at_most_eight_files(tmp_path, synthetic_dir):
    out = tmp_path / "out"
    proc = run_check("--dry-run", str(synthetic_dir), str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == OUT_FILES
    summary = (out / "summary.md").read_text()
    assert summary in proc.stdout  # printed at the end too
    for step in ("tta-fast", "tta-seed", "compare", "throughput", "export", "bench", "loaders", "variants"):
        assert f"| {step} | 0 |" in summary, summary
    assert "Failed or skipped steps: none." in summary
    fast = json.loads((out / "tta-fast.json").read_text())
    assert fast["preset"] == "fast" and fast["n"] == 3 and fast["target"] == 0.94
    assert [r["seed"] for r in fast["runs"]] == [0, 1, 2] and all("seconds_to_target" in r for r in fast["runs"])
    compare = json.loads((out / "compare-results.json").read_text())  # stdout of --json is pure JSON
    assert set(compare["lr_selection"]["32px-imagenet"]) == {"imagenet", "random"}
    assert compare["pretrained"]["kind"] in ("stand-in", "torchvision")
    bench = json.loads((out / "bench.json").read_text())
    assert {r["label"] for r in bench} == {"torch", "torch:bf16", "onnxruntime"}
    assert all(r["status"] == "ok" for r in bench) and "torch:bf16 (bf16" in summary
    assert "- loaders on cpu, batch 64: tensor" in summary
    assert json.loads((out / "export.json").read_text())["onnx"][0]["parity"]["passed"]
    with tarfile.open(out / "work.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("compare/report.md") for n in names) and any(n.endswith("tta-fast.log") for n in names)
    assert not [n for n in names if n.endswith((".pt", ".safetensors", ".onnx", ".pth"))]  # no weights travel


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
