"""The `fastcifar` command group: which verbs exist, how an error leaves the program, and `main()`.

Each verb is one module of this package, imported only when that verb runs or its help is shown (COMMANDS maps
verb -> module; the module defines a click command of the module's name). User mistakes arrive as FastCifarError
and leave as one red line on stderr with the error's exit code, never a traceback.
"""

from __future__ import annotations

import importlib
import os

import click

from fastcifar import __version__
from fastcifar.errors import FastCifarError

COMMANDS = {
    "data": "data",
    "train": "train",
    "compare": "compare",
    "export": "export",
    "predict": "predict",
    "evaluate": "evaluate",
    "bench": "bench",
    "load-test": "load_test",
    "serve": "serve",
    "demo": "demo",
}


class LazyGroup(click.Group):
    """Loads a verb's module on first use, and turns FastCifarError, a filesystem error on a path the user gave, and
    Ctrl-C into one line and an exit code.

    An OSError that reaches here is a path that cannot be read or written (a directory under a file, /proc, no
    permission, a full disk): its message names the path and the reason. FASTCIFAR_DEBUG=1 shows the traceback.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"fastcifar.cli.{COMMANDS[name]}")
        return getattr(module, COMMANDS[name])

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FastCifarError as exc:
            click.secho(f"Error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)
        except OSError as exc:
            if os.environ.get("FASTCIFAR_DEBUG"):
                raise
            where = exc.filename if exc.filename is not None else "a file"
            click.secho(f"Error: cannot use {where}: {exc.strerror or exc}", fg="red", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.secho("Interrupted.", fg="yellow", err=True)
            ctx.exit(130)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="fastcifar")
def cli() -> None:
    """ImageNet-pretrained vs from-scratch ResNets on CIFAR-10: train, compare, export, serve - fast."""


def main() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: bench/README.md, "CPU threads"
    cli(prog_name="fastcifar")
