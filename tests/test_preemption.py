"""Runs on a cluster: SIGTERM (a scheduler's preemption) stops `train` resumably with exit code 143 and the resumed
run ends bit-exact; one run across two nodes with torchrun (two agents on this machine, c10d rendezvous on
127.0.0.1, gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from fastcifar.serve.triton_server import free_ports
from fastcifar.train.guards import PREEMPTED_EXIT

# 45 steps of 8 images per epoch: the signal sent once epoch 1 is recorded lands inside epoch 2.
TRAIN = ["-m", "fastcifar", "train", "--device", "cpu", "--loader", "tensor", "--no-download", "--preset", "smoke",
         "--stem", "imagenet", "--train-limit", "400", "--epochs", "3", "--batch-size", "8", "--lr", "0.01",
         "--warmup-epochs", "0.5", "--seed", "3"]


def _train(data_dir: Path, out: Path, *extra: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *TRAIN, "--data-dir", str(data_dir), "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _epochs(run: Path) -> list[int]:
    try:
        return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    except (OSError, json.JSONDecodeError):
        return []


def test_sigterm_stops_at_a_step_boundary_and_resume_is_bit_exact(tmp_path, synthetic_dir):
    whole = _train(synthetic_dir, tmp_path / "whole")
    assert whole.wait(timeout=600) == 0, whole.stderr.read()[-3000:]

    run = tmp_path / "preempted"
    proc = _train(synthetic_dir, run)
    deadline = time.monotonic() + 600
    while _epochs(run) != [1] and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # what Slurm, Kubernetes and spot instances send before they kill a job
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == PREEMPTED_EXIT == 143, err[-3000:]
    message = err.strip().splitlines()[-1]
    assert "stopped by SIGTERM after step" in message and "of epoch 2" in message, message
    step, steps = map(int, message.split("after step ")[1].split(" ")[0].split("/"))
    assert step < steps == 45, message  # inside the epoch, not after it
    assert f"fastcifar train --resume {run}" in message and "Traceback" not in err
    assert _epochs(run) == [1] and (run / "state.pt").is_file() and not (run / "model.safetensors").exists()

    resumed = subprocess.run([sys.executable, "-m", "fastcifar", "train", "--resume", str(run)], capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "the resumed run diverged"
    assert _epochs(run) == [1, 2, 3]


def test_one_run_across_two_torchrun_nodes(tmp_path, synthetic_dir):
    """Two torchrun agents, one process each, meet at a c10d rendezvous on 127.0.0.1 as nodes 0 and 1; the ranks
    split the data without overlap and end with identical weights (summary.json's `distributed`)."""
    out = tmp_path / "two-nodes"
    (port,) = free_ports(1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}  # nothing leaves the loopback
    agent = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
             "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "fastcifar-test",
             "--local-addr", "127.0.0.1",
             "-m", "fastcifar", "train", "--data-dir", str(synthetic_dir), "--out", str(out), "--device", "cpu",
             "--preset", "smoke", "--train-limit", "200", "--epochs", "1", "--batch-size", "32", "--loader",
             "tensor", "--no-download", "--json"]
    nodes = [subprocess.Popen(agent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    try:
        outputs = [node.communicate(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    dist = json.loads((out / "summary.json").read_text())["distributed"]
    assert dist["world_size"] == 2 and dist["backend"] == "gloo"
    assert sorted(dist["node_ranks"]) == [0, 1], dist  # two nodes, not two processes of one
    assert dist["shards_disjoint"] and dist["weights_identical"]
    assert dist["samples_per_rank"] == [90, 90]


def test_sigterm_stops_compare_which_a_rerun_continues(tmp_path, synthetic_dir):
    """SIGTERM inside a compare's first run: exit 143 with one message that says to rerun the study (not to resume
    one run), and the same command then finishes the study from that run's saved epoch."""
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "fastcifar", "compare", "--data-dir", str(synthetic_dir), "--out", str(out),
           "--device", "cpu", "--loader", "tensor", "--no-download", "--preset", "smoke", "--stem", "imagenet",
           "--train-limit", "400", "--epochs", "3", "--batch-size", "8", "--lr", "0.01", "--seeds", "1",
           "--fractions", "1.0", "--robustness-severities", "none", "--if-no-weights", "stand-in"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not any(_epochs(run) for run in out.glob("runs/*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == PREEMPTED_EXIT, err[-3000:]
    message = err.strip().splitlines()[-1]
    assert message.startswith("Error: stopped by SIGTERM in ") and f"(--out {out})" in message, message
    assert "Traceback" not in err and "train --resume" not in message
    assert not (out / "results.json").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming " in again.stderr, again.stderr[-3000:]  # the stopped run continued, not restarted
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 2
