"""`fastcifar evaluate MODEL`: calibration and corruption robustness on the test split
(fastcifar/serve/evaluate_model.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from fastcifar.cli.options import (backend_option, checkpoint_option, data_dir_option, device_option,
                                   json_option, model_argument, serving_precision_option)
from fastcifar.rundir import checkpoint_file


@click.command()
@model_argument
@backend_option("Inference backend; auto runs the given file as it is (as for predict).")
@device_option
@serving_precision_option()
@data_dir_option
@click.option("--corruptions", default="all", show_default=True,
              help="all | none | comma-separated names among: gaussian_noise, shot_noise, impulse_noise, "
                   "gaussian_blur, contrast, brightness, saturate, pixelate, jpeg_compression.")
@click.option("--severities", default="1-5", show_default=True, help="Severities 1-5, e.g. 1,3,5 or 1-5.")
@click.option("--cifar10c", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory of the official CIFAR-10-C files (<corruption>.npy + labels.npy): numbers comparable "
                   "with papers. [default: corruptions generated from the test images on the device]")
@click.option("--max-images", type=int, default=None, help="First N test images only. [default: all]")
@click.option("--plots", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for the reliability diagram (reliability.png). [default: none]")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated corruptions.")
@checkpoint_option
@json_option
def evaluate(model: Path, backend: str, device: str, precision: str | None, data_dir: Path | None, corruptions: str,
             severities: str, cifar10c: Path | None, max_images: int | None, plots: Path | None, seed: int,
             checkpoint: str, as_json: bool) -> None:
    """Calibration and corruption robustness of MODEL on the CIFAR-10 test split (what pretraining buys beyond
    top-1): accuracy, NLL, Brier score, ECE (15 bins), reliability diagram; accuracy per corruption and severity
    (CIFAR-10-C's definitions), their mean and its ratio to clean accuracy.

    MODEL is a run directory, model.safetensors, .onnx file or TensorRT engine.

    \b
    Examples:
      fastcifar evaluate runs/r18 --data-dir ~/data/cifar10 --corruptions all --severities 1,3,5 --json
      fastcifar evaluate exported/r18.onnx --corruptions gaussian_noise,contrast --plots reports/eval
      fastcifar evaluate runs/r18 --cifar10c ~/data/CIFAR-10-C
    """
    model = checkpoint_file(model, checkpoint)
    from fastcifar.robustness import parse_corruptions, parse_severities
    from fastcifar.serve.evaluate_model import evaluate_model, print_evaluation

    result = evaluate_model(model, backend=None if backend == "auto" else backend, device=device, precision=precision,
                            data_dir=data_dir, corruptions=parse_corruptions(corruptions),
                            severities=parse_severities(severities), cifar10c=cifar10c, max_images=max_images,
                            plots=plots, seed=seed, log=lambda message: click.echo(f"evaluate: {message}", err=True))
    if as_json:
        click.echo(json.dumps(result))
    else:
        print_evaluation(result)
