"""`fastcifar serve MODEL`: the model on a real NVIDIA Triton Inference Server through PyTriton
(fastcifar/serve/triton_server.py), until Ctrl-C or SIGTERM."""

from __future__ import annotations

from pathlib import Path

import click

from fastcifar.cli.options import (backend_option, checkpoint_option, device_option, model_argument,
                                   serving_precision_option)
from fastcifar.rundir import checkpoint_file


@click.command()
@model_argument
@backend_option("Inference backend behind the server; auto runs the given file as it is (as for predict).")
@device_option
@serving_precision_option()
@checkpoint_option
@click.option("--name", default=None,
              help="The model's name on the server. [default: the run directory's name or the file's stem]")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address every endpoint binds. Use 0.0.0.0 only to serve other machines.")
@click.option("--http-port", type=int, default=8000, show_default=True, help="HTTP/REST (KServe v2) port.")
@click.option("--grpc-port", type=int, default=8001, show_default=True, help="gRPC (KServe v2) port.")
@click.option("--metrics-port", type=int, default=8002, show_default=True, help="Prometheus metrics port.")
@click.option("--max-batch", type=click.IntRange(min=1), default=256, show_default=True,
              help="Largest batch Triton forms from queued requests, and largest request it accepts.")
@click.option("--queue-delay-us", type=click.IntRange(min=0), default=None,
              help="How long Triton holds a request to batch it with others. [default: 100, as in the exported "
                   "repository's config]")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("exported/cache"),
              show_default=True, help="Cache of on-the-fly ONNX exports and TensorRT engines.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the ready line as one JSON object (model, urls, backend, precision, pid).")
def serve(model: Path, backend: str, device: str, precision: str | None, checkpoint: str, name: str | None,
          host: str, http_port: int, grpc_port: int, metrics_port: int, max_batch: int, queue_delay_us: int | None,
          cache_dir: Path, as_json: bool) -> None:
    """Serve MODEL on a real NVIDIA Triton Inference Server (PyTriton): HTTP and gRPC (KServe v2), dynamic
    batching, Prometheus metrics. Needs the serve extra (pip install -e '.[serve]' in the checkout).

    MODEL is a run directory, model.safetensors, .onnx file or TensorRT engine.

    The model takes what the exported repository's models take (fastcifar export --triton-repo): input `pixels`
    uint8 [N, S, S, 3] RGB, output `logits` float32 [N, classes]; its config carries the class names. The model
    is ready only after a warm-up batch. Ctrl-C or SIGTERM stops the server and its tritonserver process.

    \b
    Examples:
      fastcifar serve runs/resnet18-imagenet
      fastcifar serve exported/resnet18-imagenet.onnx --http-port 9000 --grpc-port 9001 --metrics-port 9002
      fastcifar predict --server localhost:8000 cat.jpg
      fastcifar load-test localhost:8000 --concurrency 1,8,32
    """
    model = checkpoint_file(model, checkpoint)
    from fastcifar.serve.triton_server import ServeConfig, ready_line, serve_model

    cfg = ServeConfig(model=str(model), backend=None if backend == "auto" else backend, device=device,
                      precision=precision, name=name, host=host, http_port=http_port, grpc_port=grpc_port,
                      metrics_port=metrics_port, max_batch=max_batch, queue_delay_us=queue_delay_us,
                      cache_dir=str(cache_dir))
    serve_model(cfg, on_ready=lambda info: click.echo(ready_line(info, as_json)),
                log=lambda message: click.echo(f"serve: {message}", err=True))
    click.echo("serve: stopped", err=True)
