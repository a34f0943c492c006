"""`fastcifar demo`: a Gradio page with the ImageNet-pretrained and the from-scratch model side by side
(fastcifar/serve/demo.py)."""

from __future__ import annotations

from pathlib import Path

import click

from fastcifar.cli.options import backend_option, checkpoint_option, serving_precision_option
from fastcifar.rundir import checkpoint_file


@click.command()
@click.option("--pretrained", required=True, type=click.Path(path_type=Path),
              help="The ImageNet-pretrained model: a run directory, model.safetensors, .onnx or TensorRT engine.")
@click.option("--scratch", required=True, type=click.Path(path_type=Path),
              help="The from-scratch model, in any of the same forms.")
@backend_option("Inference backend for both models; auto picks the one that runs the given file.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Use 0.0.0.0 only to make the demo reachable from other machines.")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True, help="Port to serve on.")
@click.option("--share/--no-share", default=False, show_default=True,
              help="Ask Gradio for a temporary public *.gradio.live link (needs internet).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="CIFAR-10 directory for the example gallery (never downloaded here). [default: the models' "
                   "recorded data dir, else $FASTCIFAR_DATA, else ~/.cache/fastcifar; no CIFAR gallery if none]")
@click.option("--examples", "examples_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A folder of your own images to add to the gallery. [default: none]")
@serving_precision_option()
@checkpoint_option
def demo(pretrained: Path, scratch: Path, backend: str, host: str, port: int, share: bool,
         data_dir: Path | None, examples_dir: Path | None, precision: str | None, checkpoint: str) -> None:
    """Serve a web page: one image in, ImageNet-pretrained and from-scratch top-10 side by side.

    Each model is named by what its run records: a "pretrained" run that `compare --if-no-weights stand-in`
    trained from stand-in random weights is titled and flagged as a stand-in, not ImageNet-pretrained.

    Example: fastcifar demo --pretrained runs/pretrained --scratch runs/scratch
    """
    import logging

    from fastcifar.serve.demo import serve

    logger = logging.getLogger("fastcifar")  # our notes only; Gradio/httpx keep their own (noisy) loggers quiet
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler())
    pretrained, scratch = checkpoint_file(pretrained, checkpoint), checkpoint_file(scratch, checkpoint)
    serve(pretrained, scratch, backend=backend, host=host, port=port, share=share, data_dir=data_dir,
          examples_dir=examples_dir, precision=precision)
