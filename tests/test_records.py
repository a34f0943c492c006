"""Run records users expect (issue 22): results.csv equal to metrics.jsonl, TensorBoard events read back by
tensorboard's own reader (and never imported without --tensorboard), the best-validation checkpoint and
--checkpoint best, and env.json saying exactly what code made the run."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from fastcifar.cli import cli
from fastcifar.config import TrainConfig
from fastcifar.errors import FastCifarError
from fastcifar.rundir import RESULTS_COLUMNS, checkpoint_file
from fastcifar.train import loop as loop_module
from fastcifar.train.loop import train


def tiny(data_dir, out, **kw) -> TrainConfig:
    base = dict(data_dir=str(data_dir), out=str(out), stem="imagenet", epochs=3, batch_size=32, lr=0.05,
                warmup_epochs=0.5, device="cpu", loader="tensor", download=False, train_limit=300)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory, synthetic_dir):
    return train(tiny(synthetic_dir, tmp_path_factory.mktemp("records") / "run", tensorboard=True), progress=False)


def test_results_csv_rows_equal_metrics_jsonl(tb_run):
    metrics = [json.loads(line) for line in (tb_run.run_dir / "metrics.jsonl").read_text().splitlines()]
    with (tb_run.run_dir / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(RESULTS_COLUMNS) and len(rows) == len(metrics) == 3
    for row, m in zip(rows, metrics):
        for key in RESULTS_COLUMNS:
            assert (row[key] == "" and m.get(key) is None) or float(row[key]) == pytest.approx(m[key]), key
    assert [float(r["lr"]) for r in rows][-1] == pytest.approx(0.0)  # the schedule's end (decay to 0)


def test_tensorboard_reader_reads_back_every_scalar(tb_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fastcifar.train.records import TB_SCALARS

    metrics = [json.loads(line) for line in (tb_run.run_dir / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(tb_run.run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    for key, tag in TB_SCALARS.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [m["epoch"] for m in metrics], tag
        assert [e.value for e in events] == pytest.approx([m[key] for m in metrics], rel=1e-5), tag
    assert "confusion_matrix" in acc.Tags()["images"]


def test_without_tensorboard_it_is_never_imported(tmp_path, synthetic_dir):
    code = ("import sys, json; sys.path.insert(0, 'tests'); from test_records import tiny; "
            "from fastcifar.train.loop import train; "
            f"train(tiny({str(synthetic_dir)!r}, {str(tmp_path / 'run')!r}, epochs=1), progress=False); "
            "print(json.dumps(sorted(m for m in sys.modules if 'tensorboard' in m)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_the_best_validation_epoch_is_kept_and_served(tmp_path, synthetic_dir, monkeypatch):
    """A scripted validation accuracy that peaks at epoch 2 of 3: best.safetensors holds epoch 2's weights."""
    scripted = iter([0.30, 0.70, 0.50])
    weights = {}
    real = loop_module.evaluate

    def evaluate(session, last=False):
        metrics = real(session, last)  # the same dict the session keeps for its summary
        metrics["val_acc"] = next(scripted)
        weights[len(weights) + 1] = {k: v.detach().clone() for k, v in session.eval_model().state_dict().items()}
        return metrics

    monkeypatch.setattr(loop_module, "evaluate", evaluate)
    run = train(tiny(synthetic_dir, tmp_path / "run"), progress=False)
    best = run.summary["best"]
    assert best["file"] == "best.safetensors" and best["epoch"] == 2 and best["val_acc"] == 0.70
    assert best["final_test_acc"] == run.summary["test_acc"] and best["test_acc"] is not None
    saved = load_file(str(run.run_dir / "best.safetensors"))
    assert all(torch.equal(saved[k], weights[2][k]) for k in saved)
    assert not all(torch.equal(saved[k], weights[3][k]) for k in saved)  # not the final weights
    meta = json.loads((run.run_dir / "best.json").read_text())
    assert meta["epoch"] == 2 and meta["checkpoint"] == "best" and meta["metrics"]["val_acc"] == 0.70

    # Eight test images, not one made-up colour: far from the data a model's softmax saturates to exactly 1.0 / 0.0,
    # and two different weight sets then give the same answer (it did with one torch thread per xdist worker).
    from PIL import Image

    from fastcifar.data.cifar import load_cifar10

    images = []
    for i, pixels in enumerate(load_cifar10(synthetic_dir, download=False).test.images[:8]):
        images.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(pixels).save(images[-1])

    def predict(*args):
        result = CliRunner().invoke(cli, ["predict", *args, *images, "--device", "cpu", "--json",
                                          "--topk", "10"])
        assert result.exit_code == 0, result.output
        return [{t["label"]: t["prob"] for t in row["top"]} for row in json.loads(result.stdout)]

    by_option = predict(str(run.run_dir), "--checkpoint", "best")
    assert by_option == predict(str(run.run_dir / "best.safetensors"))  # the same weights, found without code
    assert by_option != predict(str(run.run_dir))  # and not the final model's


def test_no_validation_split_means_no_best_checkpoint_said_once(tmp_path, synthetic_dir, capsys):
    run = train(tiny(synthetic_dir, tmp_path / "run", val_fraction=0.0, epochs=2), progress="lines")
    assert not (run.run_dir / "best.safetensors").exists()
    assert run.summary["best"]["file"] is None and "--val-fraction 0" in run.summary["best"]["reason"]
    assert capsys.readouterr().err.count("no best checkpoint is kept") == 1
    with pytest.raises(FastCifarError, match="keeps one only with a validation split"):
        checkpoint_file(run.run_dir, "best")


def test_env_json_says_what_code_and_machine_made_the_run(tb_run):
    env = json.loads((tb_run.run_dir / "env.json").read_text())
    for key in ("git_sha", "git_dirty", "git_diff_sha256", "torch", "torchvision", "cuda", "cudnn", "driver",
                "device", "device_name"):
        assert key in env, key
    assert env["device"] == "cpu" and env["device_name"]
    from fastcifar.rundir import GIT_DIFF_KEEP_BYTES

    if env["git_dirty"] and env["git_diff_bytes"] <= GIT_DIFF_KEEP_BYTES:  # a small diff is kept beside the run
        import hashlib

        diff = (tb_run.run_dir / "git.diff").read_bytes()
        assert hashlib.sha256(diff).hexdigest() == env["git_diff_sha256"] and len(diff) == env["git_diff_bytes"]
    elif not env["git_dirty"]:
        assert env["git_diff_sha256"] is None and not (tb_run.run_dir / "git.diff").exists()


def test_export_takes_the_best_checkpoint_under_its_own_name(tmp_path, synthetic_dir):
    run = train(tiny(synthetic_dir, tmp_path / "run", epochs=2), progress=False)
    result = CliRunner().invoke(cli, ["export", str(run.run_dir), "--checkpoint", "best", "--out", str(tmp_path / "ex"),
                                      "--verify-images", "16", "--json"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ex" / "run-best.onnx").is_file()  # never the final model's file name


def test_a_resume_drops_a_best_checkpoint_from_epochs_it_trains_again(tmp_path):
    from fastcifar.rundir import RunDir
    from fastcifar.train.records import RunRecords

    (tmp_path / "best.safetensors").write_bytes(b"weights of epoch 3")
    (tmp_path / "best.json").write_text(json.dumps({"epoch": 3, "metrics": {"val_acc": 0.9}}))
    kept = RunRecords(tiny(".", tmp_path), RunDir(tmp_path), None, {}, start_epoch=3)
    assert kept.best == {"epoch": 3, "val_acc": 0.9} and (tmp_path / "best.safetensors").exists()
    dropped = RunRecords(tiny(".", tmp_path), RunDir(tmp_path), None, {}, start_epoch=2)  # state.pt: epoch 2
    assert dropped.best is None and not (tmp_path / "best.safetensors").exists()
    assert not (tmp_path / "best.json").exists()
