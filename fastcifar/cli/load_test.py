"""`fastcifar load-test URL`: concurrent clients against a Triton server on this machine: images/s, latency
percentiles, errors and the server's mean batch (fastcifar/bench/load_test.py)."""

from __future__ import annotations

import json

import click

from fastcifar.errors import FastCifarError


@click.command()
@click.argument("url")
@click.option("--name", metavar="NAME", default=None,
              help="The served model's name (as serve --name and predict --name). [default: the model fastcifar "
                   "serve serves, else the server's only model]")
@click.option("--concurrency", default="1,8,32", show_default=True,
              help="Numbers of concurrent clients, comma-separated: one level each.")
@click.option("--batch-sizes", default="8", show_default=True,
              help="Images per request, comma-separated: one level per concurrency and batch size.")
@click.option("--requests", type=click.IntRange(min=1), default=200, show_default=True,
              help="Requests per level (each level also stops at --duration).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True,
              help="Seconds per level at most.")
@click.option("--metrics-url", default=None,
              help="Triton's Prometheus endpoint. [default: http://HOST:8002/metrics]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def load_test(url: str, name: str | None, concurrency: str, batch_sizes: str, requests: int, duration: float,
              metrics_url: str | None, as_json: bool) -> None:
    """Load-test a Triton server: concurrent clients, images/s, p50/p95/p99 latency, errors and the server's mean
    batch, per level of concurrency and request size.

    URL is http://localhost:PORT, grpc://localhost:PORT or localhost:PORT: a server on this machine only (fastcifar
    serve, or a Triton loading export --triton-repo), so a shared one is never overloaded by mistake.

    \b
    Examples:
      fastcifar serve runs/resnet18-imagenet        # in another terminal
      fastcifar load-test localhost:8000 --concurrency 1,8,32 --json
    """
    from fastcifar.bench.load_test import LoadConfig, load_test as run_load_test
    from fastcifar.bench.tables import print_load_table
    from fastcifar.config import parse_counts

    cfg = LoadConfig(server=url, model=name, concurrency=parse_counts(concurrency, "--concurrency", sort=True),
                     batch_sizes=parse_counts(batch_sizes, "--batch-sizes", sort=True), requests=requests,
                     duration_s=duration, metrics_url=metrics_url)
    result = run_load_test(cfg, log=lambda message: click.echo(f"load-test: {message}", err=True))
    if as_json:
        click.echo(json.dumps(result))
    else:
        print_load_table(result)
    failed = sum(r["errors"] for r in result["rows"])
    if failed:
        raise FastCifarError(f"{failed} request(s) failed during the load test")
