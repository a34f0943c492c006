"""bench/train_throughput.py --jsonl: one JSON line per measured configuration, written as it is measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "train_throughput.py"


def test_jsonl_gets_one_line_per_configuration(tmp_path):
    out, jsonl = tmp_path / "out.json", tmp_path / "new" / "rows.jsonl"  # the folder does not exist yet
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--arch", "resnet18", "--stem", "imagenet",
         "--batch-sizes", "2", "--precisions", "fp32,bf16", "--layouts", "nchw,channels_last", "--steps", "1",
         "--warmup", "1", "--no-compile", "--out", str(out), "--jsonl", str(jsonl)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]  # --out is still written at the end
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(lines) == len(results) == 4
    configs = [(r["batch"], r["precision"], r["channels_last"], r["compile"]) for r in lines]
    assert configs == [(2, "fp32", False, False), (2, "fp32", True, False), (2, "bf16", False, False),
                       (2, "bf16", True, False)]
    import torch

    for line, result in zip(lines, results):
        assert {k: line[k] for k in result} == result  # the same figure as the final file
        assert line["images_per_second"] > 0 and line["compile_mode"] is None
        assert line["device"] == "cpu" and line["gpu"] is None and line["torch"] == torch.__version__
        assert line["cudnn_benchmark"] is False and line["arch"] == "resnet18" and line["stem"] == "imagenet"
        assert line["steps"] == 1 and line["warmup"] == 1 and line["host"]


def test_a_killed_run_keeps_the_configurations_it_measured(tmp_path):
    """Killed as `timeout` would kill it, once its first configuration is measured: that line is on disk, whole."""
    import time

    out, jsonl = tmp_path / "out.json", tmp_path / "rows.jsonl"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--arch", "resnet18", "--stem", "imagenet",
         "--batch-sizes", ",".join(["2"] * 50), "--precisions", "fp32", "--layouts", "nchw", "--steps", "1",
         "--warmup", "1", "--no-compile", "--out", str(out), "--jsonl", str(jsonl)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (jsonl.exists() and jsonl.read_text().strip()) and time.monotonic() < deadline:
            assert proc.poll() is None, "the script ended before it measured anything"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert 1 <= len(lines) < 50 and all(line["batch"] == 2 and line["images_per_second"] > 0 for line in lines)
    assert not out.exists()  # --out comes only at the end
