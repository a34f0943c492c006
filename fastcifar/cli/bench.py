"""`fastcifar bench MODEL...`: accuracy parity and speed of each inference backend on local models, each backend
in its own process (fastcifar/bench/harness.py). A running server is load-tested by `fastcifar load-test`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from fastcifar.bench import DEFAULT_RESULTS_DIR
from fastcifar.cli.options import (checkpoint_option, data_dir_option, device_option,
                                   serving_precision_option)
from fastcifar.errors import FastCifarError
from fastcifar.rundir import checkpoint_file


@click.command()
@click.argument("models", metavar="MODEL...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--backends", default="torch,torch-compiled,onnxruntime,tensorrt", show_default=True,
              help="Comma-separated backends, each optionally with a precision for the torch ones (torch:fp32, "
                   "torch:bf16, torch-compiled:fp16) so one run sets them side by side; those that cannot run "
                   "here are listed as 'skipped: why'. The parity reference is always PyTorch fp32 eager.")
@click.option("--batch-sizes", default="1,64,256,1024", show_default=True,
              help="Inference batch sizes to time, comma-separated (images per forward call). Not train's "
                   "--batch-size (the training batch); a TensorRT engine skips sizes above the MAX of the profile "
                   "it was exported with (export --batch MIN:OPT:MAX).")
@data_dir_option
@click.option("--download/--no-download", default=False, show_default=True,
              help="Download CIFAR-10 when it is found neither in --data-dir nor where the run was trained from "
                   "(off: a benchmark measures, it does not fetch data unasked).")
@device_option
@serving_precision_option("the torch backends that name none in --backends")
@click.option("--max-images", type=click.IntRange(min=1), default=None,
              help="Score on the first N test images only. [default: all]")
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="PyTorch fp32 reference (run dir). [default: the model itself; for an .onnx, the run named "
                   "in its metadata when found here with the same weights]")
@click.option("--max-accuracy-drop", type=float, default=None,
              help="Parity gate: exit 1 when a backend's accuracy is more than this many percentage points below "
                   "the reference (or a backend fails). [default: no gate]")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_RESULTS_DIR,
              show_default=True, help="Where the JSON, markdown and PNG results go (created; under the current "
                                      "directory unless absolute).")
@click.option("--save/--no-save", default=True, show_default=True, help="Write the result files.")
@click.option("--name", default=None, help="Result file name stem. [default: inference-<models>-<device>]")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("exported/cache"),
              show_default=True, help="Cache of on-the-fly ONNX exports and TensorRT engines.")
@click.option("--min-time", type=float, default=1.0, show_default=True, help="Seconds timed per batch size.")
@click.option("--warmup", type=float, default=0.5, show_default=True, help="Warm-up seconds per batch size.")
@click.option("--min-iters", type=click.IntRange(min=1), default=3, show_default=True,
              help="Fewest timed calls per batch size.")
@click.option("--latency-iters", type=click.IntRange(min=1), default=100, show_default=True,
              help="Fewest batch-1 calls for the latency percentiles.")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Timing rounds, round-robin over the backends; each figure is the best round (shared machines).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads per backend (torch and ONNX Runtime). [default: each runtime's own, one per core]")
@click.option("--json", "as_json", is_flag=True,
              help="Print the per-backend results as a JSON list instead of a table. [default: table]")
@click.option("--jsonl", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also append each result row to this file as one JSON line the moment the row is final (its "
                   "folder is created; an existing file is kept), so a bench killed by a time limit leaves every "
                   "row it finished. Each line names its model, label/backend, precision, device, batch_sizes and "
                   "machine. [default: off]")
@checkpoint_option
def bench(models: tuple[Path, ...], backends: str, batch_sizes: str, data_dir: Path | None, download: bool,
          device: str, precision: str | None, max_images: int | None, reference: Path | None,
          max_accuracy_drop: float | None, results_dir: Path, save: bool, name: str | None, cache_dir: Path,
          min_time: float, warmup: float, min_iters: int, latency_iters: int, repeats: int, threads: int | None,
          as_json: bool, jsonl: Path | None, checkpoint: str) -> None:
    """Accuracy parity and speed of each inference backend; each backend runs alone in its own process.

    Each MODEL is a run directory, model.safetensors, .onnx file or TensorRT engine.

    \b
    Examples:
      fastcifar bench runs/resnet18-imagenet --data-dir ~/data/cifar10
      fastcifar bench runs/r18 --backends torch,onnxruntime --batch-sizes 1,256 --json
      fastcifar bench exported/r18.onnx --reference runs/r18 --max-accuracy-drop 0.1   # CI gate
    """
    models = tuple(checkpoint_file(m, checkpoint) for m in models)
    from fastcifar.bench.harness import BenchConfig, bench as run_bench, parse_backends, parse_batch_sizes

    cfg = BenchConfig(models=tuple(str(m) for m in models), backends=parse_backends(backends),
                      batch_sizes=parse_batch_sizes(batch_sizes), data_dir=str(data_dir) if data_dir else None,
                      download=download, device=device, max_images=max_images,
                      reference=str(reference) if reference else None, max_accuracy_drop=max_accuracy_drop,
                      results_dir=str(results_dir) if save else None, name=name, cache_dir=str(cache_dir),
                      warmup_s=warmup, min_time_s=min_time, min_iters=min_iters, latency_iters=latency_iters,
                      repeats=repeats, threads=threads, precision=precision, jsonl=str(jsonl) if jsonl else None)
    report = run_bench(cfg, log=lambda message: click.echo(f"bench: {message}", err=True))
    if as_json:
        click.echo(json.dumps(report.rows))
    else:
        from fastcifar.bench.tables import print_table

        print_table(report)
        for file in report.files:
            click.echo(f"wrote {file}")
    if not report.passed:
        raise FastCifarError("bench failed: " + "; ".join(report.failures))
