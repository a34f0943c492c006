"""`fastcifar predict MODEL IMAGE...`: top-k labels for image files and folders from a local model
(fastcifar/serve/predictor.py) or, with --server URL, from a Triton server (fastcifar/serve/triton_client.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from fastcifar.cli.options import (backend_option, checkpoint_option, device_option, given_options,
                                   serving_precision_option, usage_error)
from fastcifar.rundir import checkpoint_file

FORMS = "fastcifar predict MODEL IMAGE... or fastcifar predict --server URL IMAGE..."


@click.command()
@click.argument("paths", metavar="MODEL IMAGE...", nargs=-1, type=click.Path(path_type=Path))
@backend_option("Inference backend; auto runs the given file as it is (run dir: torch, .onnx: onnxruntime, "
                "engine: tensorrt). A run dir with onnxruntime/tensorrt is exported on the fly (cached).")
@device_option
@serving_precision_option()
@click.option("--topk", type=click.IntRange(min=1), default=3, show_default=True, help="Labels shown per image.")
@click.option("--json", "as_json", is_flag=True,
              help='Print a JSON list [{"file", "top": [{"label", "prob"}], "backend", "precision"}] instead of a '
                   'table. [default: table]')
@checkpoint_option
@click.option("--server", default=None,
              help="Ask a Triton server instead of loading a model here: http://HOST:PORT, grpc://HOST:PORT or "
                   "HOST:PORT (fastcifar serve, or a Triton loading export --triton-repo). Then every argument is "
                   "an image.")
@click.option("--name", metavar="NAME", default=None,
              help="With --server: the served model's name. [default: the model fastcifar serve serves, else the "
                   "server's only model]")
def predict(paths: tuple[Path, ...], backend: str, device: str, precision: str | None, topk: int, as_json: bool,
            checkpoint: str, server: str | None, name: str | None) -> None:
    """Classify image files (any format Pillow reads; directories are walked) with a trained model.

    MODEL (a run directory, model.safetensors, .onnx file or TensorRT engine) comes first, then the images; with
    --server every argument is an image. Unreadable files get a message on stderr and the others are still
    predicted; the exit code is 1 if any failed.

    \b
    Examples:
      fastcifar predict runs/resnet18-imagenet cat.jpg photos/
      fastcifar predict exported/resnet18-imagenet.onnx *.png --topk 1 --json
      fastcifar predict --server localhost:8000 cat.jpg            # a Triton server (fastcifar serve)
    """
    from fastcifar.serve.predictor import load_predictor, predict_files

    if server is not None:
        local = given_options(("backend", "device", "precision", "checkpoint"))
        if local:
            raise usage_error(f"{', '.join(local)} choose a local model; with --server the server runs its own "
                              "(give them to fastcifar serve)")
        if not paths:
            raise usage_error("Missing IMAGE: fastcifar predict --server URL IMAGE... [--name NAME]")
        from fastcifar.serve.triton_client import TritonPredictor

        predictor, images = TritonPredictor(server, name), paths
    else:
        if name is not None:
            raise usage_error("--name names a served model: add --server URL (a local MODEL comes first)")
        if not paths:
            raise usage_error(f"Missing MODEL and IMAGE: {FORMS}")
        if len(paths) == 1:
            raise usage_error(f"Missing IMAGE: give at least one image file or folder after the model - {FORMS}")
        model, images = checkpoint_file(paths[0], checkpoint), paths[1:]
        predictor = load_predictor(model, None if backend == "auto" else backend, device, precision=precision)
    results, failures = predict_files(predictor, images, topk=topk)
    for item in results:  # every output says what ran
        item.update(backend=predictor.backend, precision=predictor.precision)
        if server is not None:
            item.update(server=str(predictor.url), model=predictor.name)
    for _, message in failures:
        click.secho(f"Error: {message}", fg="red", err=True)
    if as_json:
        click.echo(json.dumps(results))
    elif results:
        _print_predictions(results, f"{predictor.backend} {predictor.precision} on {predictor.device}")
    if failures:
        sys.exit(1)


def _print_predictions(results: list[dict], backend: str) -> None:
    from rich.table import Table

    from fastcifar.runtime import table_console

    table = Table(title=f"predictions ({backend})")
    table.add_column("file", overflow="fold")
    for i in range(len(results[0]["top"])):
        table.add_column(f"top {i + 1}")
    for item in results:
        table.add_row(item["file"], *(f"{t['label']} {t['prob']:.1%}" for t in item["top"]))
    table_console().print(table)
