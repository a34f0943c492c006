"""The `fastcifar` command line: one thin click command per verb, each turning options into one library call.

Heavy imports (torch, DALI, ONNX, Gradio) happen inside the commands so `fastcifar --help` and
`--version` stay instant. User mistakes arrive as `FastCifarError` and leave as one line on stderr with a
non-zero exit code; nothing here prints a traceback for them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from fastcifar import __version__
from fastcifar.errors import FastCifarError

NOT_BUILT_EXIT = 2


class _Group(click.Group):
    """Turns FastCifarError and Ctrl-C into a one-line message and an exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FastCifarError as exc:
            click.secho(f"Error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.secho("Interrupted.", fg="yellow", err=True)
            ctx.exit(130)


def data_dir_option(func):
    return click.option(
        "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
        help="Directory holding cifar-10-batches-py/ (or the batch files, or cifar-10-python.tar.gz). "
             "[default: $FASTCIFAR_DATA, else ~/.cache/fastcifar]")(func)


def download_option(func):
    return click.option(
        "--download/--no-download", default=True, show_default=True,
        help="Download the official archive (md5-verified) when CIFAR-10 is not found.")(func)


def json_option(func):
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")(func)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="fastcifar")
def cli() -> None:
    """ImageNet-pretrained vs from-scratch ResNets on CIFAR-10: train, compare, export, serve - fast."""


@cli.command()
@data_dir_option
@download_option
@json_option
def data(data_dir: Path | None, download: bool, as_json: bool) -> None:
    """Find (or download) CIFAR-10, verify it and print split sizes, class counts and channel mean/std.

    Example: fastcifar data --data-dir ../shared/cifar10 --json
    """
    from fastcifar.data.cifar import load_cifar10, split_stats

    dataset = load_cifar10(data_dir, download=download, progress=not as_json and sys.stderr.isatty())
    stats = {"root": str(dataset.root), "class_names": list(dataset.class_names),
             "train": split_stats(dataset.train), "test": split_stats(dataset.test)}
    if as_json:
        click.echo(json.dumps(stats))
        return
    _print_data_stats(stats)


def _print_data_stats(stats: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"CIFAR-10 in {stats['root']}")
    table.add_column("class")
    table.add_column("train", justify="right")
    table.add_column("test", justify="right")
    for i, name in enumerate(stats["class_names"]):
        table.add_row(f"{i} {name}", str(stats["train"]["per_class"][i]), str(stats["test"]["per_class"][i]))
    table.add_section()
    table.add_row("total", str(stats["train"]["count"]), str(stats["test"]["count"]), style="bold")
    for key in ("mean", "std"):
        table.add_row(f"{key} (R,G,B; 0-255)", *(", ".join(f"{v:.2f}" for v in stats[s][key])
                                                 for s in ("train", "test")))
    Console().print(table)


def _not_built(verb: str, issue: str):
    def command() -> None:
        click.echo(f"fastcifar {verb}: not built yet ({issue}).", err=True)
        sys.exit(NOT_BUILT_EXIT)

    command.__name__ = verb
    command.__doc__ = f"(not built yet: {issue})"
    return cli.command(name=verb, context_settings={"ignore_unknown_options": True})(
        click.argument("args", nargs=-1, type=click.UNPROCESSED)(lambda args: command()))


for _verb, _issue in [("train", "training engine"), ("compare", "compare report"), ("export", "ONNX/TensorRT export"),
                      ("bench", "parity benchmark"), ("predict", "engine inference"), ("demo", "Gradio demo")]:
    _not_built(_verb, _issue)


def main() -> None:
    cli(prog_name="fastcifar")


if __name__ == "__main__":
    main()
