"""`fastcifar bench`: JSON schema, result files, the export cache, and the parity gate on a broken model."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastcifar.cli import cli
from fastcifar.errors import FastCifarError

# Tiny timing budget: these tests check behaviour, never speed.
FAST = ["--batch-sizes", "1,4", "--min-time", "0.02", "--warmup", "0.01", "--min-iters", "1",
        "--latency-iters", "3", "--device", "cpu", "--threads", "1"]


def _bench(*args):
    return CliRunner().invoke(cli, ["bench", *map(str, args), *FAST], catch_exceptions=False)


# ---------------------------------------------------------------------------------------------- pure parts


def test_parity_metrics_and_gate():
    from fastcifar.bench.harness import gate_failures
    from fastcifar.export.parity import parity_metrics

    labels = np.array([0, 1, 2, 3])
    ref = np.eye(4, 10)  # predicts 0,1,2,3: 100 %
    same = parity_metrics(ref + 1e-3, labels, ref)
    assert same["accuracy"] == 1.0 and same["agreement"] == 1.0 and same["accuracy_drop"] == 0.0
    assert same["max_abs_diff"] == pytest.approx(1e-3)
    worse = ref.copy()
    worse[3] = np.eye(10)[5]  # one of four wrong: 25 points lost
    m = parity_metrics(worse, labels, ref)
    assert (m["accuracy"], m["agreement"], m["accuracy_drop"]) == (0.75, 0.75, 25.0)
    assert parity_metrics(worse, labels, None)["agreement"] is None
    rows = [{"model": "m", "backend": "onnxruntime", "status": "ok", **m},
            {"model": "m", "backend": "tensorrt", "status": "skipped", "reason": "no GPU", **m},
            {"model": "m", "backend": "torch", "status": "ok", **same}]
    assert gate_failures(rows, None) == []
    failures = gate_failures(rows, 0.1)
    assert len(failures) == 1 and "onnxruntime" in failures[0] and "25.00 points" in failures[0]
    assert gate_failures(rows, 30) == []
    rows.append({"model": "m", "backend": "torch-compiled", "status": "failed", "reason": "boom"})
    assert gate_failures(rows, None) == ["m / torch-compiled: failed (boom)"]


def test_merge_rounds_keeps_the_best_round():
    from fastcifar.bench.measure import merge_rounds

    # Every figure is best in a different round, and each round's first call differs, so taking one whole round
    # (or the wrong one) for any figure fails an assertion below.
    def run(img_s, h2d, p50, p99, host, first_call):
        return {"throughput": img_s, "throughput_h2d": h2d, "latency_ms": {"p50": p50, "p99": p99},
                "peak_host_mb": host, "peak_device_mb": None, "first_call_s": {"1": first_call}}

    merged = merge_rounds([run({"1": 100, "64": 3500}, {"1": 90, "64": 800}, 5.0, 6.0, 900, 9.0),
                           run({"1": 300, "64": 2000}, {"1": 40, "64": 700}, 4.0, 30.0, 950, 1.0),
                           run({"1": 200, "64": 3000}, {"1": 80, "64": 1900}, 2.0, 9.0, 980, 2.0)])
    assert merged["rounds"] == 3 and merged["throughput"] == {"1": 300, "64": 3500}  # the best per batch size
    assert merged["throughput_h2d"] == {"1": 90, "64": 1900}
    assert merged["throughput_rounds"] == {"1": [100, 300, 200], "64": [3500, 2000, 3000]}
    assert merged["latency_ms"] == {"p50": 2.0, "p99": 9.0}  # the round with the best p50, its p99 with it
    assert merged["peak_host_mb"] == 980 and merged["peak_device_mb"] is None  # memory: the largest any round used
    assert merged["first_call_s"] == {"1": 9.0}  # the first round's: later ones may hit compile caches
    cpu_round = run({"1": 1}, {"1": None}, 1.0, 2.0, 1, 1.0)
    no_h2d = merge_rounds([cpu_round, cpu_round])
    assert no_h2d["throughput_h2d"] == {"1": None}  # CPU rounds: nothing to compare


def test_options_are_validated():
    from fastcifar.bench.harness import BenchConfig, parse_backends, parse_batch_sizes

    assert parse_batch_sizes("1, 64,256") == (1, 64, 256)
    for bad in ("", "0,4", "a,b"):
        with pytest.raises(FastCifarError, match="batch-sizes"):
            parse_batch_sizes(bad)
    assert parse_backends("torch,onnxruntime") == ("torch", "onnxruntime")
    with pytest.raises(FastCifarError, match="tflite"):
        parse_backends("torch,tflite")
    with pytest.raises(FastCifarError, match="distinct"):
        BenchConfig(models=("m",), backends=("torch", "torch"))
    with pytest.raises(FastCifarError, match="max-accuracy-drop"):
        BenchConfig(models=("m",), max_accuracy_drop=-1)


def test_timing_helpers():
    from fastcifar.bench.worker import calibrated_iters, percentile_ms, tile_batch, time_calls

    assert calibrated_iters(0.1, 1.0, 3) == 10 and calibrated_iters(2.0, 1.0, 3) == 3
    assert calibrated_iters(0.0, 1.0, 3) == 100_000
    images = np.arange(3 * 2 * 2 * 3, dtype=np.uint8).reshape(3, 2, 2, 3)
    tiled = tile_batch(images, 7)
    assert tiled.shape == (7, 2, 2, 3) and np.array_equal(tiled[3], images[0]) and tiled.flags.c_contiguous
    stats = percentile_ms([0.001] * 99 + [0.1])
    assert stats["p50"] == pytest.approx(1.0) and stats["p99"] > 1.0 and stats["n"] == 100
    calls, syncs = [], []
    result = time_calls(lambda: calls.append(1), lambda: syncs.append(1), "wall", warmup_s=0.0, min_time_s=0.0,
                        min_iters=5)
    assert result["iters"] == 5 and len(calls) == 1 + 1 + 5 and result["seconds_per_call"] >= 0


def test_worker_peak_memory_is_its_own_not_the_parents():
    import subprocess
    import sys

    import torch  # noqa: F401 - makes this (parent) process large

    from fastcifar.bench.worker import peak_rss_mb

    ballast = np.ones(200 * 2**20 // 8)  # +200 MB resident here, before the child is started
    child = subprocess.run([sys.executable, "-c", "from fastcifar.bench.worker import peak_rss_mb; "
                            "print(peak_rss_mb())"], capture_output=True, text=True, check=True)
    assert float(child.stdout) < 150 < peak_rss_mb()  # ru_maxrss would report the parent's peak here
    del ballast


def test_report_rendering_with_skipped_and_failed_rows(tmp_path):
    from fastcifar.bench.tables import markdown, table_rows, write_reports
    from fastcifar.bench.harness import BenchReport

    ok = {"model": "runs/r18", "backend": "torch", "status": "ok", "reason": None, "device": "cpu", "images": 10,
          "accuracy": 0.9, "accuracy_drop": 0.0, "agreement": 1.0, "max_abs_diff": 0.0, "mean_abs_diff": 0.0,
          "throughput": {"1": 100.0, "64": 900.0}, "throughput_h2d": None, "latency_ms": {"p50": 9.0, "p99": 12.0},
          "peak_host_mb": 500.0, "peak_device_mb": None}
    skipped = {**ok, "backend": "tensorrt", "status": "skipped", "reason": "no GPU"}
    report = BenchReport(rows=[ok, skipped], env={"gpus": []}, config={}, failures=["x: too slow? no: failed"])
    header, cells = table_rows(report.rows)
    assert "img/s @64" in header and cells[0][header.index("img/s @64")] == "900"
    assert "skipped: no GPU" in cells[1]
    text = markdown(report)
    assert "| r18 | torch | 90.00% |" in text and "Gate failed" in text
    files = write_reports(report, tmp_path, "demo")
    assert sorted(f.name for f in files) == ["demo.json", "demo.md", "demo.png"]
    assert json.loads((tmp_path / "demo.json").read_text())["results"][1]["status"] == "skipped"
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------------- end to end


def test_bench_json_schema_results_files_and_cache(tiny_model_dir, synthetic_dir, tmp_path):
    results, cache = tmp_path / "results", tmp_path / "cache"
    args = [tiny_model_dir, "--backends", "torch,onnxruntime,tensorrt", "--data-dir", synthetic_dir,
            "--max-images", "24", "--results-dir", results, "--cache-dir", cache, "--name", "t",
            "--max-accuracy-drop", "0.1", "--json"]
    result = _bench(*args)
    assert result.exit_code == 0, result.output
    rows = {r["backend"]: r for r in json.loads(result.stdout)}
    assert list(rows) == ["torch", "onnxruntime", "tensorrt"]
    for name in ("torch", "onnxruntime"):
        r = rows[name]
        assert r["status"] == "ok" and r["images"] == 24
        assert 0.0 <= r["accuracy"] <= 1.0 and r["agreement"] == 1.0 and r["accuracy_drop"] == 0.0
        assert isinstance(r["max_abs_diff"], float) and r["max_abs_diff"] < 1e-3
        assert set(r["throughput"]) == {"1", "4"} and all(v > 0 for v in r["throughput"].values())
        assert r["throughput_h2d"] is None  # CPU: no host-to-device copy exists
        assert r["latency_ms"]["p50"] > 0 and r["latency_ms"]["p99"] >= r["latency_ms"]["p50"]
        assert r["peak_host_mb"] > 0 and r["peak_device_mb"] is None
    assert rows["torch"]["max_abs_diff"] == 0.0  # the torch row *is* the reference
    assert rows["onnxruntime"]["providers"] == ["CPUExecutionProvider"]
    assert rows["tensorrt"]["status"] == "skipped" and "CUDA GPU" in rows["tensorrt"]["reason"]
    assert "tensorrt: skipped" in result.stderr
    assert sorted(p.name for p in results.iterdir()) == ["t.json", "t.md", "t.png"]
    assert json.loads((results / "t.json").read_text())["passed"] is True
    onnx_files = list(cache.glob("*/model.onnx"))
    assert len(onnx_files) == 1
    mtime = onnx_files[0].stat().st_mtime_ns
    again = _bench(tiny_model_dir, "--backends", "onnxruntime", "--data-dir", synthetic_dir,
                   "--max-images", "8", "--cache-dir", cache, "--no-save", "--repeats", "2")
    assert again.exit_code == 0, again.output
    assert "round 2/2" in again.stderr
    assert list(cache.glob("*/model.onnx")) == onnx_files and onnx_files[0].stat().st_mtime_ns == mtime
    assert "onnxruntime" in again.stdout and "agreement" in again.stdout  # the table


def test_bench_writes_its_reports_under_reports_bench_of_the_working_directory(tiny_model_dir, synthetic_dir,
                                                                                 tmp_path, monkeypatch):
    """Run inside a checkout, the default must not add files to the committed bench/results/ record."""
    monkeypatch.chdir(tmp_path)
    result = _bench(tiny_model_dir, "--backends", "torch", "--data-dir", synthetic_dir, "--max-images", "8",
                    "--cache-dir", tmp_path / "cache", "--name", "default")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "reports" / "bench").iterdir()) == ["default.json", "default.md",
                                                                               "default.png"]
    assert not (tmp_path / "bench").exists()
    assert "wrote reports/bench/default.json" in result.stdout
    assert "[default: reports/bench]" in " ".join(CliRunner().invoke(cli, ["bench", "--help"]).output.split())


@pytest.fixture(scope="module")
def gate_setup(tmp_path_factory, synthetic_dir):
    """A good model, a broken copy (classifier rows rotated), and test labels = the good model's predictions.

    Labelling the test set with the good model's own predictions makes its accuracy 100 % by construction,
    so the broken model's loss is large and certain even though neither model was trained.
    """
    import torch

    from conftest import make_saved_model
    from fastcifar.data.cifar import ensure_cifar, load_split
    from fastcifar.serve.predictor import load_predictor
    from fastcifar.models import load_model, save_model

    root = tmp_path_factory.mktemp("gate")
    good = make_saved_model(root / "good", seed=5)
    model, spec, meta = load_model(good)
    with torch.no_grad():  # logit k now comes from class k-1's weights: every decision shifts by one class
        model.fc.weight.copy_(model.fc.weight.roll(1, 0))
        model.fc.bias.copy_(model.fc.bias.roll(1, 0))
    broken = root / "broken"
    save_model(model, spec, broken, metrics=meta.get("metrics"), extra={"run_name": "broken"})
    test = load_split(ensure_cifar(synthetic_dir, download=False), "test")
    images = test.images[:16]
    labels = load_predictor(good, "torch", "cpu").predict(images).argmax(1)
    data = root / "data" / "cifar-10-batches-py"
    data.mkdir(parents=True)
    rows = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))
    with open(data / "test_batch", "wb") as fh:
        pickle.dump({"batch_label": "test", "labels": [int(v) for v in labels], "data": rows}, fh, protocol=2)
    return good, broken, root / "data"


def test_parity_gate_fails_on_a_broken_onnx_export(gate_setup, tmp_path):
    from fastcifar.export import export_onnx

    good, broken, data = gate_setup
    broken_onnx = export_onnx(broken, tmp_path / "broken.onnx", verify=False).path
    result = _bench(broken_onnx, "--reference", good, "--backends", "onnxruntime", "--data-dir", data,
                    "--max-accuracy-drop", "0.1", "--no-save", "--json")
    assert result.exit_code == 1
    (row,) = json.loads(result.stdout)
    assert row["reference_accuracy"] == 1.0 and row["accuracy"] == 0.0 and row["agreement"] == 0.0
    assert row["accuracy_drop"] == 100.0
    assert "bench failed" in result.stderr and "100.00 points below" in result.stderr
    assert "Traceback" not in result.stderr


def test_parity_gate_needs_a_reference(gate_setup, tmp_path):
    from fastcifar.export import export_onnx

    good, _, data = gate_setup
    onnx_path = export_onnx(good, tmp_path / "orphan.onnx", verify=False).path  # its run is not findable from here
    result = CliRunner().invoke(cli, ["bench", str(onnx_path), "--data-dir", str(data),
                                      "--max-accuracy-drop", "0.1", "--no-save", *FAST])
    assert result.exit_code == 1 and "--reference" in result.output


def test_the_documented_onnx_gate_passes_as_written(gate_setup, tmp_path, monkeypatch):
    """inference.md's CI gate, `bench exported/<run>.onnx --reference runs/<run> --max-accuracy-drop 0.1`, with the
    default backends and no --data-dir: the torch backends cannot run an .onnx and are skipped (not failures), the
    test images come from where the reference run recorded them, and an .onnx whose source run sits under runs/
    finds them for `evaluate` too."""
    from conftest import make_saved_model
    from fastcifar.export import export_onnx

    good, _, data = gate_setup
    monkeypatch.chdir(tmp_path)
    run = make_saved_model(tmp_path / "runs" / "r1", seed=5, data_dir=data)  # the same weights as `good`
    onnx_path = export_onnx(run, tmp_path / "exported" / "r1.onnx", verify=False).path
    result = CliRunner().invoke(cli, ["bench", "exported/r1.onnx", "--reference", "runs/r1",
                                      "--max-accuracy-drop", "0.1", "--no-save", "--json", *FAST])
    assert result.exit_code == 0, result.output
    rows = {r["backend"]: r for r in json.loads(result.stdout)}
    assert rows["onnxruntime"]["status"] == "ok" and rows["onnxruntime"]["accuracy"] == 1.0
    assert rows["torch"]["status"] == rows["torch-compiled"]["status"] == "skipped"
    assert "an .onnx file" in rows["torch"]["reason"]
    assert f"from {data}" in result.stderr  # the reference run's recorded data folder
    # evaluate: the .onnx names its source run (runs/r1 here), whose model.json records the data folder
    result = CliRunner().invoke(cli, ["evaluate", str(onnx_path), "--corruptions", "none", "--json"])
    assert result.exit_code == 0, result.output
    evaluation = json.loads(result.stdout)
    assert evaluation["n_test"] == 16 and evaluation["clean"]["accuracy"] == 1.0  # the relabelled 16 images


def test_a_gate_where_no_backend_ran_fails(gate_setup):
    from fastcifar.bench.harness import gate_failures

    rows = [{"model": "m.onnx", "backend": b, "label": b, "status": "skipped", "reason": "not installed"}
            for b in ("onnxruntime", "tensorrt")]
    (failure,) = gate_failures(rows, 0.1)
    assert "checked nothing" in failure and "onnxruntime: not installed" in failure
    assert gate_failures(rows, None) == []  # without a gate, skipped backends are only reported


def test_a_backend_that_cannot_load_fails_the_run_with_its_reason(synthetic_dir, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    result = _bench(bad, "--backends", "onnxruntime", "--data-dir", synthetic_dir, "--max-images", "4",
                    "--no-save")
    assert result.exit_code == 1
    assert "onnxruntime: FAILED" in result.stdout and "not a readable ONNX file" in result.stdout
    assert "bench failed" in result.stderr and "Traceback" not in result.output


def test_worker_processes_import_this_fastcifar():
    """The worker runs in a fresh interpreter: its PYTHONPATH starts at the folder that holds this package."""
    import os

    import fastcifar
    from fastcifar.bench.measure import _worker_env

    first = Path(_worker_env()["PYTHONPATH"].split(os.pathsep)[0])
    assert (first / "fastcifar" / "__init__.py").resolve() == Path(fastcifar.__file__).resolve()


# ---------------------------------------------------------------------------------------------- --jsonl


def test_jsonl_has_one_line_per_final_row(tiny_model_dir, synthetic_dir, tmp_path):
    jsonl = tmp_path / "new" / "folder" / "rows.jsonl"  # the folders do not exist yet
    result = _bench(tiny_model_dir, "--backends", "torch,tensorrt,torch:bf16", "--data-dir", synthetic_dir,
                    "--max-images", "8", "--no-save", "--json", "--jsonl", jsonl)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert lines == rows and [r["label"] for r in lines] == ["torch", "tensorrt", "torch:bf16"]
    for row in lines:  # what tells one figure from another without the rest of the report
        assert row["backend"] in ("torch", "tensorrt") and row["device"] == "cpu" and row["batch_sizes"] == [1, 4]
        assert set(row["machine"]) == {"host", "cpu", "cpu_count", "gpu"} and row["machine"]["gpu"] is None
    assert [r["precision"] for r in lines] == ["fp32", None, "bf16"] and lines[1]["status"] == "skipped"
    assert lines[0]["agreement"] == 1.0 and lines[2]["agreement"] is not None  # final: parity scored
    again = _bench(tiny_model_dir, "--backends", "tensorrt", "--data-dir", synthetic_dir,
                   "--max-images", "8", "--no-save", "--jsonl", jsonl)
    assert again.exit_code == 0, again.output
    assert len(jsonl.read_text().splitlines()) == 4  # appended: an earlier run's rows are kept


def test_jsonl_keeps_the_rows_finished_before_an_interruption(tiny_model_dir, synthetic_dir, tmp_path, monkeypatch):
    """The third backend's measurement is interrupted (as `timeout` would kill it): the first two rows are on disk."""
    from fastcifar.bench import harness, measure
    from fastcifar.fileio import read_jsonl

    real_worker = measure.run_worker

    def worker(job, workdir, timeout_s):
        if job["precision"] == "bf16":
            raise KeyboardInterrupt
        return real_worker(job, workdir, timeout_s)

    monkeypatch.setattr(measure, "run_worker", worker)
    jsonl = tmp_path / "rows.jsonl"
    cfg = harness.BenchConfig(models=(str(tiny_model_dir),), backends=("torch", "tensorrt", "torch:bf16"),
                              batch_sizes=(1, 4), data_dir=str(synthetic_dir), download=False, device="cpu",
                              max_images=8, results_dir=None, warmup_s=0.01, min_time_s=0.02, min_iters=1,
                              latency_iters=3, threads=1, jsonl=str(jsonl))
    with pytest.raises(KeyboardInterrupt):
        harness.bench(cfg)
    torch_row, trt_row = read_jsonl(jsonl)
    assert torch_row["label"] == "torch" and torch_row["status"] == "ok" and torch_row["agreement"] == 1.0
    assert set(torch_row["throughput"]) == {"1", "4"} and torch_row["images"] == 8
    assert trt_row["label"] == "tensorrt" and trt_row["status"] == "skipped"
    assert not list(tmp_path.glob(".rows.jsonl.*"))  # no temporary file left behind


@pytest.mark.parametrize("case", ["reference row later", "separate reference", "reference row fails", "repeats"])
def test_each_row_is_written_as_soon_as_it_is_final(case, tiny_model_dir, synthetic_dir, tmp_path, monkeypatch):
    """Fake workers record the order of jobs and written rows: a row is written right after the job that makes it
    final (its last round, or the reference it waits for), never at the end."""
    from conftest import make_saved_model
    from fastcifar.bench import harness, measure
    from fastcifar.fileio import read_jsonl

    events = []

    def worker(job, workdir, timeout_s):
        events.append(f"job {job['backend']}:{job['precision']}" + ("" if job["timing"] else " (reference)"))
        if case == "reference row fails" and job["backend"] == "torch" and job["precision"] == "fp32" and job["timing"]:
            return {"error": "boom"}
        if job["evaluate"]:
            np.save(job["logits_out"], np.eye(8, 10, dtype=np.float32))
        return {"predictor": {"precision": job["precision"], "device": "cpu"}, "throughput": {"1": 10.0},
                "throughput_h2d": {"1": None}, "latency_ms": {"p50": 1.0, "p99": 2.0}, "peak_host_mb": 1.0,
                "peak_device_mb": None, "first_call_s": {"1": 0.1}}

    def append(path, row):
        events.append(f"row {row['label']}")
        real_append(path, row)

    real_append = harness.append_row
    monkeypatch.setattr(measure, "run_worker", worker)
    monkeypatch.setattr(harness, "append_row", append)
    monkeypatch.setattr(measure, "ensure_artifact", lambda path, backend, cache_dir: Path(path))
    reference = make_saved_model(tmp_path / "other", seed=3) if case == "separate reference" else None
    jsonl = tmp_path / "rows.jsonl"
    cfg = harness.BenchConfig(models=(str(tiny_model_dir),), backends=("onnxruntime", "torch", "torch:bf16"),
                              data_dir=str(synthetic_dir), download=False, device="cpu", max_images=8,
                              results_dir=None, reference=str(reference) if reference else None,
                              repeats=2 if case == "repeats" else 1, jsonl=str(jsonl))
    report = harness.bench(cfg)
    expected = {
        "reference row later": ["job onnxruntime:None", "job torch:fp32", "row onnxruntime", "row torch",
                                "job torch:bf16", "row torch:bf16"],
        "separate reference": ["job torch:fp32 (reference)", "job onnxruntime:None", "row onnxruntime",
                               "job torch:fp32", "row torch", "job torch:bf16", "row torch:bf16"],
        "reference row fails": ["job onnxruntime:None", "job torch:fp32", "job torch:fp32 (reference)",
                                "row onnxruntime", "row torch", "job torch:bf16", "row torch:bf16"],
        "repeats": ["job onnxruntime:None", "job torch:fp32", "job torch:bf16",
                    "job onnxruntime:None", "row onnxruntime", "job torch:fp32", "row torch",
                    "job torch:bf16", "row torch:bf16"],
    }[case]
    assert events == expected
    assert read_jsonl(jsonl) == report.rows
    statuses = [r["status"] for r in report.rows]
    assert statuses == (["ok", "failed", "ok"] if case == "reference row fails" else ["ok", "ok", "ok"])
    assert all(r["agreement"] == 1.0 for r in report.rows if r["status"] == "ok")


def test_jsonl_bad_paths_are_one_clean_error(tiny_model_dir, synthetic_dir, tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    common = ["bench", str(tiny_model_dir), "--data-dir", str(synthetic_dir), "--device", "cpu",
              "--no-save"]
    under_a_file = CliRunner().invoke(cli, [*common, "--jsonl", str(a_file / "rows.jsonl")])
    assert under_a_file.exit_code == 1 and "Traceback" not in under_a_file.output
    errors = [line for line in under_a_file.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"--jsonl {a_file / 'rows.jsonl'}" in errors[0] and "cannot be created" in errors[0]
    a_folder = CliRunner().invoke(cli, [*common, "--jsonl", str(tmp_path)])
    assert a_folder.exit_code == 2 and "is a directory" in a_folder.output and "Traceback" not in a_folder.output
    help_text = CliRunner().invoke(cli, ["bench", "--help"]).output
    assert "--jsonl" in help_text and "[default: off]" in help_text.split("--jsonl")[1].split("--")[0]


def test_rows_name_the_gpu_without_touching_cuda_here(monkeypatch):
    import subprocess

    from fastcifar.bench import measure

    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, stdout="NVIDIA H100 80GB HBM3\n", stderr="")

    monkeypatch.setattr(measure.subprocess, "run", fake_run)
    machine = measure.machine_info("cuda:1", "cuda")
    assert machine["gpu"] == "NVIDIA H100 80GB HBM3" and machine["host"] and machine["cpu_count"] >= 1
    assert len(calls) == 1 and "'cuda:1'" in calls[0][-1]  # asked in a child process, for the benched device
    assert measure.machine_info("cpu", "cpu")["gpu"] is None and len(calls) == 1
