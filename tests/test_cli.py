"""The `fastcifar` command line: `data`, errors without tracebacks, fast --help/--version, every verb's --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastcifar import __version__
from fastcifar.cli import COMMANDS, cli
from fastcifar.data.synthetic import (malicious_pickle, synthetic_arrays, write_synthetic_archive,
                                      write_synthetic_cifar)

REPO = Path(__file__).resolve().parents[1]
VERBS = cli.list_commands(None)


def _run(args: list[str], env: dict | None = None):
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=True)


def _subprocess(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, **(env or {})})


def _assert_one_line_error(result, *fragments: str) -> str:
    """Exit 1, stderr is exactly one line "Error: ...", no traceback, nothing on stdout."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)  # no other exception escaped the command
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def _expected_stats(images: np.ndarray, labels: np.ndarray) -> dict:
    flat = images.reshape(-1, 3).astype(np.float64)
    return {"count": len(labels), "per_class": np.bincount(labels, minlength=10).tolist(),
            "mean": flat.mean(0).tolist(), "std": flat.std(0).tolist()}


# ---------------------------------------------------------------------------------------------- data


def test_data_json_schema_and_values(synthetic_dir):
    result = _run(["data", "--data-dir", str(synthetic_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.strip().splitlines()) == 1  # one JSON object on one line
    stats = json.loads(result.stdout)
    train_images, train_labels, test_images, test_labels = synthetic_arrays(500, 200, 0)  # conftest's dataset
    for split, images, labels in [("train", train_images, train_labels), ("test", test_images, test_labels)]:
        got, want = stats[split], _expected_stats(images, labels)
        assert set(got) >= {"count", "per_class", "mean", "std"}
        assert isinstance(got["count"], int) and got["count"] == want["count"]
        assert len(got["per_class"]) == 10 and all(isinstance(c, int) for c in got["per_class"])
        assert got["per_class"] == want["per_class"] and sum(got["per_class"]) == got["count"]
        assert len(got["mean"]) == 3 and len(got["std"]) == 3
        assert all(isinstance(v, float) for v in got["mean"] + got["std"])
        assert got["mean"] == pytest.approx(want["mean"], abs=1e-3)
        assert got["std"] == pytest.approx(want["std"], abs=1e-3)
    assert stats["train"]["count"] == 500 and stats["test"]["count"] == 200


def test_data_table(synthetic_dir):
    result = _run(["data", "--data-dir", str(synthetic_dir)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for word in ("airplane", "truck", "total", "500", "200", "mean", "std"):
        assert word in out
    train_mean = _expected_stats(*synthetic_arrays(500, 200, 0)[:2])["mean"]
    assert ", ".join(f"{v:.2f}" for v in train_mean) in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_data_uses_fastcifar_data_env(synthetic_dir):
    result = _run(["data", "--json"], env={"FASTCIFAR_DATA": str(synthetic_dir)})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["train"]["count"] == 500


def test_data_accepts_the_batch_files_directory(synthetic_dir):
    result = _run(["data", "--data-dir", str(synthetic_dir / "cifar-10-batches-py"), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["test"]["count"] == 200


@pytest.mark.parametrize("sub", ["empty", "does/not/exist"])
def test_data_bad_dir_without_download(tmp_path, sub):
    data_dir = tmp_path / sub
    data_dir.mkdir(parents=True) if sub == "empty" else None
    line = _assert_one_line_error(_run(["data", "--data-dir", str(data_dir), "--no-download"]),
                                  str(data_dir), "--data-dir")
    assert "--no-download" in line


def test_data_truncated_batch(tmp_path):
    batches = write_synthetic_cifar(tmp_path, n_train=20, n_test=10)
    raw = (batches / "test_batch").read_bytes()
    (batches / "test_batch").write_bytes(raw[: len(raw) // 2])
    _assert_one_line_error(_run(["data", "--data-dir", str(tmp_path), "--json"]),
                           str(batches / "test_batch"), "truncated")


def test_data_missing_batch(tmp_path):
    batches = write_synthetic_cifar(tmp_path, n_train=20, n_test=10)
    (batches / "data_batch_4").unlink()
    _assert_one_line_error(_run(["data", "--data-dir", str(tmp_path)]), "data_batch_4")


def test_data_archive_that_is_not_the_official_one(tmp_path):
    archive = write_synthetic_archive(tmp_path / "cifar-10-python.tar.gz", n_train=20, n_test=10)
    _assert_one_line_error(_run(["data", "--data-dir", str(tmp_path), "--json"]), str(archive), "md5")
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_data_malicious_pickle_in_a_real_process(tmp_path):
    marker = tmp_path / "pwned"
    batches = write_synthetic_cifar(tmp_path / "data", n_train=20, n_test=10)
    (batches / "data_batch_1").write_bytes(malicious_pickle(marker))
    proc = _subprocess("-m", "fastcifar", "data", "--data-dir", str(tmp_path / "data"), "--no-download",
                       "--json")
    assert proc.returncode == 1, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and str(batches / "data_batch_1") in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- the group


def test_version():
    result = _run(["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"fastcifar, version {__version__}"


def _imported_modules(args: list[str]) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`python -m fastcifar ARGS` in a fresh interpreter, and every module in its sys.modules at exit."""
    code = ("import atexit, runpy, sys; atexit.register(lambda: print('MODULES', *sys.modules, file=sys.stderr)); "
            f"sys.argv = ['fastcifar', *{args!r}]; runpy.run_module('fastcifar', run_name='__main__')")
    proc = _subprocess("-c", code)
    lines = [line.split()[1:] for line in proc.stderr.splitlines() if line.startswith("MODULES ")]
    return proc, set(lines[-1]) if lines else set()


@pytest.mark.parametrize("args", [["--help"], ["--version"], *([verb, "--help"] for verb in VERBS)])
def test_help_and_version_do_not_import_torch(args):
    proc, modules = _imported_modules(args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {"click", "fastcifar.cli"} <= modules  # the import log was parsed
    heavy = sorted(m for m in modules if m.split(".")[0] in {"torch", "torchvision", "nvidia", "onnx",
                                                             "onnxruntime", "tensorrt", "gradio", "tritonclient"})
    assert heavy == []
    assert (f"fastcifar, version {__version__}" in proc.stdout) == (args == ["--version"])
    # A verb's module is imported when that verb shows its help (the group's help lists them all), not before.
    verb_modules = {m for m in modules if m.startswith("fastcifar.cli.") and m != "fastcifar.cli.options"}
    expected = {"--version": set(), "--help": {f"fastcifar.cli.{module}" for module in COMMANDS.values()}}
    assert verb_modules == expected.get(args[0], {f"fastcifar.cli.{COMMANDS.get(args[0])}"})


def test_python_m_fastcifar_help_lists_the_verbs():
    proc = _subprocess("-m", "fastcifar", "--help")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert "Usage:" in proc.stdout
    for verb in VERBS:
        assert verb in proc.stdout


def test_data_help_documents_its_options():
    result = _run(["data", "--help"])
    assert result.exit_code == 0
    for option in ("--data-dir", "--download / --no-download", "--json", "FASTCIFAR_DATA"):
        assert option in result.stdout


def test_every_verb_has_help():
    assert {"data", "train", "compare", "export", "bench", "load-test", "predict", "demo"} <= set(VERBS)
    for verb in VERBS:
        result = _run([verb, "--help"])
        assert result.exit_code == 0, (verb, result.output, result.exception)
        assert f"Usage: cli {verb}" in result.stdout or f"Usage: fastcifar {verb}" in result.stdout


# ---------------------------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_data_json_on_real_cifar10(real_cifar):
    result = _run(["data", "--data-dir", str(real_cifar), "--json", "--no-download"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["train"]["count"] == 50_000 and stats["test"]["count"] == 1_000
    assert stats["train"]["per_class"] == [5000] * 10
    assert sum(stats["test"]["per_class"]) == 1_000 and min(stats["test"]["per_class"]) > 0
    assert stats["train"]["mean"] == pytest.approx([125.31, 122.95, 113.87], abs=0.01)
    assert stats["train"]["std"] == pytest.approx([62.99, 62.09, 66.70], abs=0.01)
    assert stats["class_names"][:3] == ["airplane", "automobile", "bird"]


def test_every_verb_runs_with_passive_openmp_unless_the_user_chose(monkeypatch):
    """Set before torch loads OpenMP (bench/README.md measures why); an explicit setting wins."""
    import fastcifar.cli as cli_module

    seen = []
    monkeypatch.setattr(cli_module, "cli", lambda **kwargs: seen.append(os.environ.get("OMP_WAIT_POLICY")))
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    cli_module.main()
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    cli_module.main()
    assert seen == ["PASSIVE", "ACTIVE"]
    proc = subprocess.run([sys.executable, "-c", "import os, fastcifar.cli as c; c.cli = lambda **k: "
                           "print(os.environ['OMP_WAIT_POLICY'], 'torch' in __import__('sys').modules); c.main()"],
                          capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                               if k != "OMP_WAIT_POLICY"})
    assert proc.stdout.split() == ["PASSIVE", "False"]  # set while torch is not loaded yet


# ---------------------------------------------------------------------------------------------- one vocabulary


def _captured(monkeypatch, module, name: str, result):
    """Replace module.name with a stub that records its arguments and returns `result`."""
    calls = []

    def stub(*args, **kwargs):
        calls.append((args, kwargs))
        return result

    monkeypatch.setattr(module, name, stub)
    return calls


def test_bench_takes_its_models_as_arguments(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from fastcifar.bench import harness

    calls = _captured(monkeypatch, harness, "bench", SimpleNamespace(rows=[], files=[], passed=True, failures=[]))
    a, b = tmp_path / "run-a", tmp_path / "run-b.onnx"
    common = ["--backends", "torch,onnxruntime", "--batch-sizes", "1,8", "--device", "cpu", "--json"]
    for args in ([str(a), *common], [*common, str(a)],  # one model, before or after the options
                 [str(a), str(b), *common]):  # two, in order
        result = _run(["bench", *args])
        assert result.exit_code == 0, result.output
    configs = [args[0] for args, _ in calls]
    assert configs[0] == configs[1] and configs[0].models == (str(a),)
    assert configs[2].models == (str(a), str(b))
    assert configs[0].backends == ("torch", "onnxruntime") and configs[0].batch_sizes == (1, 8)


def test_predict_takes_the_model_first(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from fastcifar.serve import predictor as predictor_module

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text("{}")
    photos = tmp_path / "photos"
    photos.mkdir()
    loads = _captured(monkeypatch, predictor_module, "load_predictor",
                      SimpleNamespace(backend="torch", precision="fp32", device="cpu"))
    files = _captured(monkeypatch, predictor_module, "predict_files", ([], []))
    for args in (["predict", run, "cat.jpg", photos, "--device", "cpu", "--json"],
                 ["predict", "--device", "cpu", "--json", run, "cat.jpg", photos]):
        result = _run(list(map(str, args)))
        assert result.exit_code == 0, result.output
    assert [args for args, _ in loads] == [(run, None, "cpu")] * 2
    assert [args[1] for args, _ in files] == [(Path("cat.jpg"), photos)] * 2


def test_export_and_evaluate_take_model_as_an_argument(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import fastcifar.export
    import fastcifar.serve.evaluate_model

    exports = _captured(monkeypatch, fastcifar.export, "export_model", SimpleNamespace(to_dict=dict, error=None))
    evaluations = _captured(monkeypatch, fastcifar.serve.evaluate_model, "evaluate_model", {})
    run = tmp_path / "run"
    for verb, options in (("export", ["--no-verify", "--json"]), ("evaluate", ["--corruptions", "none", "--json"])):
        assert _run([verb, str(run), *options]).exit_code == 0  # MODEL before or after the options
        assert _run([verb, *options, str(run)]).exit_code == 0
    for calls in (exports, evaluations):
        (args, kwargs), (args2, kwargs2) = calls
        kwargs.pop("log"), kwargs2.pop("log")  # a fresh lambda per call
        assert args == args2 == (run,) and kwargs == kwargs2


@pytest.mark.parametrize("verb", ["export", "evaluate", "bench", "predict", "serve", "load-test"])
def test_a_missing_model_is_a_usage_error(verb):
    result = _run([verb])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Missing" in errors[0], result.output
    assert ("URL" if verb == "load-test" else "MODEL") in errors[0], result.output


def test_compare_help_derives_its_defaults_from_the_config():
    from fastcifar.config import COMPARE_DEFAULTS, COMPARE_LR_GRIDS

    text = " ".join(_run(["compare", "--help"]).stdout.split())
    grids = "; ".join(f"{preset}: {','.join(map(str, grid))}" for preset, grid in COMPARE_LR_GRIDS.items())
    assert f"[default: {grids}; none when --lr is given]" in text
    assert "smoke: 0.025,0.05" in text  # the grid the code uses (the help once said 0.05,0.1)
    options = text.split("Options:", 1)[1]
    seeds_help = options.split("--seeds ", 1)[1].split("--fractions ", 1)[0]
    fractions_help = options.split("--fractions ", 1)[1].split("--pretrained-weights ", 1)[0]
    for seeds, fractions in COMPARE_DEFAULTS.values():
        assert str(seeds) in seeds_help.split("[default:")[1]
        assert ",".join(map(str, fractions)) in fractions_help.split("[default:")[1]


def test_training_options_set_trainconfig_fields_and_compare_has_no_init():
    from dataclasses import fields

    from fastcifar.cli.options import train_params
    from fastcifar.config import TrainConfig

    names = {option.name for option in train_params()}
    assert "init" in names and names <= {f.name for f in fields(TrainConfig)}
    assert "init" not in {p.name for p in cli.get_command(None, "compare").params}


def test_precision_and_batch_help_say_which_meaning_first():
    def option_help(verb: str, option: str) -> str:
        command = cli.get_command(None, verb)
        return next(p.help for p in command.params if option in getattr(p, "opts", ()))

    for verb in ("train", "compare"):
        assert option_help(verb, "--precision").startswith("Training autocast")
        assert option_help(verb, "--batch-size").startswith("Training batch")
    for verb in ("predict", "bench", "evaluate", "demo"):
        assert option_help(verb, "--precision").startswith("Serving cast"), verb
    assert option_help("export", "--precision").startswith("Exported graph type")
    assert option_help("export", "--batch").startswith("TensorRT optimisation profile MIN:OPT:MAX")
    assert option_help("bench", "--batch-sizes").startswith("Inference batch sizes")
    for verb, option, others in (("export", "--batch", ("--batch-size", "--batch-sizes")),
                                 ("bench", "--batch-sizes", ("--batch-size", "--batch MIN:OPT:MAX")),
                                 ("train", "--batch-size", ("--batch-sizes", "--batch "))):
        assert all(o in option_help(verb, option) for o in others), (verb, option)
