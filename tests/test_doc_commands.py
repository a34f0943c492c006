"""Every command a user would copy from README.md and docs/*.md runs as written, or says why it cannot run here.

The fenced `bash` blocks are read line by line (backslash continuations joined, `&&` chains split, trailing
comments dropped). Each `fastcifar ...` command runs in a sandbox holding what the docs' placeholders name: a small
trained run for `runs/<run>` (and the run names the docs use), its ONNX exports under `exported/`, a synthetic
CIFAR-10 at `~/data/cifar10` and `$FASTCIFAR_DATA`, an image folder at `~/photos`, loose images (`cat.jpg`,
`photos/`, `test_*.png`) and a torchvision-format `resnet18-f37072fd.pth`. `train`, `compare` and `bench` commands
run with size options appended (click keeps the last value: fewer images, epochs, seeds, timing rounds), so a GPU
recipe finishes in seconds on the CPU, and a `compare` that would download ResNet weights uses stand-in weights;
everything else runs exactly as written. A command that cannot run here matches one entry of CANNOT_RUN_HERE,
whose reason says why (GPU, TensorRT, a server that runs until stopped, a download, Docker). A new command in the
docs that neither runs nor has a reason fails the test: the docs cannot drift from the CLI unnoticed.
"""

from __future__ import annotations

import glob
import re
import shlex
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from fastcifar.cli import cli

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# (pattern searched in the command, why it cannot run in this suite): first match wins.
CANNOT_RUN_HERE = [
    (r"^(make|pip|python -m pip) ", "installs or runs the project's own targets: .ci/run runs `make test` from a "
                                    "fresh clone; tests/test_wheel.py installs the built wheel in a fresh venv"),
    (r"^(docker|mkdir -p data runs)", "needs a Docker engine (tests/test_docker_files.py lints the Dockerfile and "
                                      "checks docker-compose.yml)"),
    (r"^(torchrun|srun|HEAD=|RUN=|if \[|-m fastcifar|--rdzv)",
     "torchrun / Slurm over several GPUs or nodes (tests/test_train.py runs torchrun with 2 CPU processes)"),
    (r"^ray start|--ray HEAD", "a Ray cluster of several machines"),
    (r"--gpus-per-run", "asks Ray for fractions of GPUs: needs a GPU"),
    (r"--ray\b", "a local Ray cluster per command (~30 s each): tests/test_ray.py runs compare --ray on this data"),
    (r"--trt\b", "builds a TensorRT engine: needs TensorRT and a CUDA GPU (tests marked `tensorrt`; the logic in "
                 "tests/test_tensorrt_logic.py)"),
    (r"-fp16\.engine|tritonserver", "needs a TensorRT engine / NVIDIA's Triton container and a GPU"),
    (r"^fastcifar serve\b", "starts a Triton server that runs until stopped (tests/test_serve.py starts and stops "
                            "one)"),
    (r"--server\b|^fastcifar load-test\b", "needs a running Triton server (tests/test_serve.py)"),
    (r"^python bench/serve_load\.py", "a benchmark that starts a Triton server (tests/test_serve.py)"),
    (r"^fastcifar demo\b", "starts the Gradio server, which runs until stopped (tests/test_demo.py drives it)"),
    (r"--dataset cifar100", "downloads CIFAR-100 (no internet here; tests/test_download.py runs the download "
                            "against a local HTTP server)"),
    (r"--init imagenet --stem imagenet", "downloads torchvision's ResNet-18 ImageNet weights (no internet here)"),
    (r"--cifar10c", "needs the official CIFAR-10-C files (2.9 GB)"),
]

# Appended to the docs' own options (click keeps an option's last value): sizes, never behaviour.
TRAIN_SHRINK = ["--train-limit", "120", "--epochs", "1", "--device", "cpu", "--no-compile"]
COMPARE_SHRINK = TRAIN_SHRINK + ["--train-limit", "60", "--seeds", "1", "--fractions", "1.0", "--lr-grid", "0.05",
                                 "--robustness-severities", "none", "--time-budget", "0"]
BENCH_SHRINK = ["--batch-sizes", "1,4", "--min-time", "0.02", "--warmup", "0.01", "--min-iters", "1",
                "--latency-iters", "3"]
RUN_NAMES = ("a", "b", "pretrained", "scratch", "resnet18-imagenet-20261124-101500",
             "resnet18-random-20261124-101500", "resnet18-random-20261124-103000")


def doc_commands() -> list[tuple[str, str]]:
    """(where, command) for every command line of the fenced bash blocks of README.md and docs/*.md."""
    found = []
    for path in DOC_FILES:
        text = path.read_text()
        for block in re.finditer(r"```(?:bash|sh|shell|console)\n(.*?)```", text, re.S):
            start = text[:block.start()].count("\n") + 2
            joined = re.sub(r"\\\n\s*", " ", block.group(1))
            for offset, line in enumerate(joined.splitlines()):
                line = re.sub(r"\s+#\s.*$", "", line).strip()
                if line and not line.startswith("#"):
                    for part in line.split(" && "):
                        found.append((f"{path.relative_to(ROOT)}:{start + offset}", part.strip()))
    return found


def reason_not_run(command: str) -> str | None:
    return next((why for pattern, why in CANNOT_RUN_HERE if re.search(pattern, command)), None)


def test_every_doc_command_either_runs_or_says_why_not():
    """The classification itself: each line is a fastcifar command or matches a reason; no reason is unused."""
    commands = doc_commands()
    assert len(commands) > 40  # the parser found the docs' blocks
    unknown = [f"{where}: {cmd}" for where, cmd in commands
               if not cmd.startswith("fastcifar ") and reason_not_run(cmd) is None]
    assert not unknown, "commands in the docs that neither run here nor say why:\n" + "\n".join(unknown)
    used = {pattern for pattern, _ in CANNOT_RUN_HERE for _, cmd in commands if re.search(pattern, cmd)}
    assert used == {pattern for pattern, _ in CANNOT_RUN_HERE}, "reasons no doc command needs any more"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A working folder and $HOME holding everything the docs' commands name."""
    import numpy as np
    import torch
    import torchvision
    from PIL import Image

    from fastcifar.data.cifar import load_split
    from fastcifar.data.synthetic import write_image_folder

    from fastcifar.data.synthetic import write_synthetic_cifar

    root = tmp_path_factory.mktemp("docs")
    home, work = root / "home", root / "work"
    write_synthetic_cifar(home / "data" / "cifar10", n_train=300, n_test=50, seed=0)  # small: ~30 commands run
    test = load_split(home / "data" / "cifar10" / "cifar-10-batches-py", "test")
    names = [f"class{i}" for i in range(3)]
    picks = np.concatenate([np.flatnonzero(test.labels == c)[:10] for c in range(3)])
    write_image_folder(home / "photos", test.images[picks], test.labels[picks], names)
    (work / "photos").mkdir(parents=True)
    for i, stem in enumerate(["cat", "new", "test_1", "test_2"]):
        for suffix in (".jpg", ".png"):
            Image.fromarray(test.images[i]).save(work / f"{stem}{suffix}")
        Image.fromarray(test.images[i]).save(work / "photos" / f"{stem}.png")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), work / "resnet18-f37072fd.pth")
    return home, work


@pytest.fixture(scope="module")
def trained(sandbox):
    """runs/r1 (trained for the docs' `runs/<run>`), copies under the other run names, and its ONNX exports."""
    home, work = sandbox
    data = home / "data" / "cifar10"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        result = CliRunner().invoke(cli, ["train", "--data-dir", str(data), "--preset", "smoke", "--device", "cpu",
                                          "--train-limit", "200", "--epochs", "2", "--out", "runs/r1"])
        assert result.exit_code == 0, result.output
        for name in RUN_NAMES:
            shutil.copytree(work / "runs" / "r1", work / "runs" / name)
        _interrupted_run(work / "runs" / "resnet18-random-20261124-101500", data, mp)  # training.md's --resume
        for precision in ("fp32", "fp16"):
            result = CliRunner().invoke(cli, ["export", "runs/r1", "--precision", precision])
            assert result.exit_code == 0, result.output
    assert (work / "exported" / "r1.onnx").is_file() and (work / "exported" / "r1-fp16.onnx").is_file()
    return work


class _Killed(BaseException):
    """Stands for a kill: not an Exception, so nothing in fastcifar catches it."""


def _interrupted_run(run: Path, data: Path, mp: pytest.MonkeyPatch) -> None:
    """A 2-epoch run stopped right after epoch 1's state.pt was written, as a kill at that moment leaves it."""
    from fastcifar.rundir import RunDir

    shutil.rmtree(run)
    real_save = RunDir.save_state

    def save_then_die(self, state):
        real_save(self, state)
        if state["epoch"] >= 1:  # not a setup-time save: the run must have an epoch to resume from
            raise _Killed

    with mp.context() as inner:
        inner.setattr(RunDir, "save_state", save_then_die)
        with pytest.raises(_Killed):
            CliRunner().invoke(cli, ["train", "--data-dir", str(data), "--preset", "smoke", *TRAIN_SHRINK,
                                     "--epochs", "2", "--out", str(run)], catch_exceptions=False)
    assert (run / "state.pt").is_file() and not (run / "summary.json").exists()


def _argv(command: str, home: Path, work: Path) -> list[str]:
    """The shell's work on a command line: placeholders, `~`, globs; and the size options train/compare get."""
    command = command.replace("<run>", "r1").replace("~/", f"{home}/")
    argv = []
    for arg in shlex.split(command)[1:]:
        matches = sorted(glob.glob(arg, root_dir=work)) if "*" in arg else []
        argv += matches or [arg]
    if argv[0] == "train" and "--resume" not in argv:
        argv += TRAIN_SHRINK
    elif argv[0] == "compare":
        argv += COMPARE_SHRINK
        if "--pretrained-weights" not in argv and "--if-no-weights" not in argv:
            argv += ["--if-no-weights", "stand-in"]  # ResNet weights cannot be downloaded here
    elif argv[0] == "bench":
        argv += BENCH_SHRINK
    return argv


RUNNABLE = [(where, cmd) for where, cmd in doc_commands()
            if cmd.startswith("fastcifar ") and reason_not_run(cmd) is None]


@pytest.mark.slow
@pytest.mark.parametrize("where,command", RUNNABLE, ids=[f"{w} {c[:60]}" for w, c in RUNNABLE])
def test_doc_command_runs_as_written(where, command, sandbox, trained, monkeypatch):
    home, work = sandbox
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("FASTCIFAR_DATA", str(home / "data" / "cifar10"))
    monkeypatch.setenv("FASTCIFAR_CACHE", str(home / ".cache" / "fastcifar"))
    argv = _argv(command, home, work)
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, f"{where}: `{command}` ran as `fastcifar {shlex.join(argv)}`:\n{result.output}"
    assert "Traceback" not in result.output

