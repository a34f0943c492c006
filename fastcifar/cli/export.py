"""`fastcifar export MODEL`: ONNX (checked for parity), optionally a TensorRT engine and a Triton model repository
(fastcifar/export/)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from fastcifar.cli.options import checkpoint_option, json_option, model_argument
from fastcifar.errors import FastCifarError
from fastcifar.precision import DEFAULT_ENGINE_PROFILE, EXPORT_PRECISIONS
from fastcifar.preprocess import INPUT_KINDS
from fastcifar.rundir import checkpoint_file


@click.command()
@model_argument
@click.option("--onnx/--no-onnx", default=True, show_default=True,
              help="Export the ONNX file. --no-onnx reuses the one already in --out (for --trt / INT8 only).")
@click.option("--trt", is_flag=True, default=False,
              help="Also build a TensorRT engine (needs TensorRT and an NVIDIA GPU). [default: off]")
@click.option("--precision", type=click.Choice(EXPORT_PRECISIONS), default="fp32", show_default=True,
              help="Exported graph type: the compute type written into the ONNX graph (the engine's precision "
                   "under TensorRT 11); not a training or serving setting (an exported file always runs at it). "
                   "I/O stay uint8/float32 in, float32 logits out.")
@click.option("--input", "input_kind", type=click.Choice(INPUT_KINDS), default="raw", show_default=True,
              help="raw: uint8 NHWC 32x32 pixels in, normalisation (and resize) inside the graph. "
                   "normalized: float32 NCHW at the model's image size, already normalised.")
@click.option("--opset", type=click.IntRange(min=18), default=None,
              help="ONNX opset. [default: 20; 22 for bf16]")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("exported"),
              show_default=True, help="Output directory (files are named after the run).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="CIFAR-10 for the parity check and INT8 calibration (never downloaded here). "
                   "[default: the data directory recorded in the run]")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Compare ONNX Runtime with the PyTorch model on test images; a mismatch fails the export.")
@click.option("--verify-images", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Test images for the parity check (0 = all).")
@click.option("--batch", default=DEFAULT_ENGINE_PROFILE, show_default=True,
              help="TensorRT optimisation profile MIN:OPT:MAX (or one size): the engine accepts batches of MIN to "
                   "MAX images and is tuned for OPT; used with --trt only. Not train's --batch-size (the training "
                   "batch) nor bench's --batch-sizes (the inference batches it times).")
@click.option("--workspace-gib", type=click.FloatRange(min=0.0, min_open=True), default=4.0, show_default=True,
              help="TensorRT builder workspace limit in GiB.")
@click.option("--int8-calib-images", type=click.IntRange(min=0), default=0, show_default=True,
              help="N > 0: also write an INT8 (Q/DQ) ONNX calibrated on N training images, and build the "
                   "engine from it with --trt. Needs --precision fp32.")
@click.option("--triton-repo", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write an NVIDIA Triton Inference Server model repository here: <name>_onnx/ (config.pbtxt, "
                   "labels.txt, 1/model.onnx) per ONNX file, and <name>_trt/ (1/model.plan) for the --trt engine. "
                   "Works with --input normalized too (the config then declares float32 NCHW at the model's image "
                   "size). An existing entry of another model is kept and the export fails. [default: none]")
@click.option("--triton-max-batch", type=click.IntRange(min=1), default=None,
              help="Triton max_batch_size. [default: the engine profile's MAX (--batch) for the TensorRT entry; "
                   f"{DEFAULT_ENGINE_PROFILE.split(':')[-1]}, the default profile's MAX, for ONNX entries]")
@click.option("--triton-instance-kind", type=click.Choice(("gpu", "cpu")), default="gpu", show_default=True,
              help="instance_group kind of the ONNX entries: gpu (KIND_GPU) needs a GPU in the Triton server; cpu "
                   "(KIND_CPU) for a CPU-only server. A TensorRT entry is always KIND_GPU.")
@checkpoint_option
@json_option
def export(model: Path, onnx: bool, trt: bool, precision: str, input_kind: str, opset: int | None, out_dir: Path,
           data_dir: Path | None, verify: bool, verify_images: int, batch: str, workspace_gib: float,
           int8_calib_images: int, triton_repo: Path | None, triton_max_batch: int | None, triton_instance_kind: str,
           checkpoint: str, as_json: bool) -> None:
    """Export MODEL (a run directory or model.safetensors; an .onnx for --trt alone) to ONNX / TensorRT.

    Every ONNX file is checked with onnx.checker and compared with the PyTorch model in ONNX Runtime; the
    result is written beside it as <name>.parity.json. Without TensorRT or a GPU, --trt ends with a
    message saying what is missing; the ONNX files are still written.

    Example: fastcifar export runs/r18-imagenet --precision fp16 --trt --batch 1:128:512

    Triton: fastcifar export runs/r18-imagenet --trt --triton-repo triton-models
    """
    model = checkpoint_file(model, checkpoint)
    from fastcifar.export import export_model

    summary = export_model(model, onnx=onnx, trt=trt, precision=precision, input_kind=input_kind, opset=opset,
                           out_dir=out_dir, data_dir=data_dir, verify=verify, max_images=verify_images or None,
                           batch=batch, workspace_gib=workspace_gib, int8_calib_images=int8_calib_images,
                           triton_repo=triton_repo, triton_max_batch=triton_max_batch,
                           triton_instance_kind=triton_instance_kind,
                           log=lambda message: click.echo(f"export: {message}", err=True))
    if as_json:
        click.echo(json.dumps(summary.to_dict()))
    else:
        _print_export(summary)
        for entry in summary.triton:
            click.echo(f"triton: {entry.path} ({entry.platform}, max_batch_size {entry.max_batch_size})")
        if summary.triton:
            from fastcifar.export.triton import docker_command

            click.echo(f"serve it (needs Docker and an NVIDIA GPU): {docker_command(triton_repo)}")
    if summary.error:
        raise FastCifarError(summary.error)


def _print_export(summary) -> None:
    from rich import box
    from rich.table import Table

    from fastcifar.runtime import table_console

    console = table_console()
    if summary.onnx:
        table = Table(title=f"ONNX export -> {summary.onnx[0].path.parent}", box=box.SIMPLE_HEAD)
        table.add_column("file", no_wrap=True)
        for column in ("max |diff|", "agree", "test acc torch→onnx (no TTA)", "parity"):
            table.add_column(column, justify="right")
        for r in summary.onnx:
            p = r.parity
            cells = ([f"{p['max_abs_diff']:.3g}", f"{p['top1_agreement']:.3f}",
                      f"{100 * p['torch_accuracy']:.2f} %→{100 * p['onnx_accuracy']:.2f} %",
                      "ok" if p["passed"] else "FAILED"]
                     if p else ["-", "-", "-", "not checked"])
            table.add_row(r.path.name, *cells)
        console.print(table)
        for r in summary.onnx:
            line = f"{r.path.name}: {r.size_bytes / 1e6:.1f} MB, opset {r.opset}"
            if r.parity:
                line += (f"; parity on {r.parity['n_images']} test images with {r.parity['runtime']} -> "
                         f"{r.parity_path.name}" + (f" ({r.parity['emulated']})" if r.parity.get("emulated") else ""))
            console.print(line)
    if summary.engine:
        s = summary.engine["sidecar"]
        console.print(f"engine: {summary.engine['path']}  (TensorRT {s['tensorrt_version']}, {s['gpu_name']}, "
                      f"{s['precision']}, batch {s['profile']['min']}:{s['profile']['opt']}:{s['profile']['max']})")
