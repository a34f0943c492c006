"""`fastcifar data`: find (or download) a dataset, verify it and print what it holds (fastcifar/data/datasets.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from fastcifar.cli.options import DATASET_HELP, data_dir_option, download_option, json_option
from fastcifar.data.datasets import DATASET_TITLES, DATASETS


@click.command()
@data_dir_option
@click.option("--dataset", type=click.Choice(DATASETS), default="auto", show_default=True, help=DATASET_HELP)
@download_option
@json_option
def data(data_dir: Path | None, dataset: str, download: bool, as_json: bool) -> None:
    """Find (or download) the dataset, verify it and print split sizes, class counts and channel mean/std; for an
    image folder also the images' original sizes, where the test split comes from and what is skipped and why.

    \b
    Examples:
      fastcifar data --data-dir ~/data/cifar10 --json
      fastcifar data --dataset cifar100 --data-dir ~/data
      fastcifar data --data-dir ~/photos          # ~/photos/<class>/*.jpg, or train/<class>/ [val/ test/]
    """
    from fastcifar.data.cifar import split_stats
    from fastcifar.data.datasets import load_dataset

    progress = not as_json and sys.stderr.isatty()
    loaded = load_dataset(data_dir, dataset, download=download, progress=progress)
    n = len(loaded.class_names)
    info = loaded.info
    stats = {"root": str(loaded.root), "dataset": info.get("dataset", "cifar10"),
             "class_names": list(loaded.class_names), "train": split_stats(loaded.train, n),
             "test": split_stats(loaded.test, n), "test_source": info.get("test_source"),
             "skipped": info.get("skipped") or {}, "skipped_summary": info.get("skipped_summary"),
             "notes": info.get("notes") or []}
    if stats["dataset"] == "folder":
        from fastcifar.data.folder import original_size_stats

        stats.update(storage_size=info.get("storage_size"), cache=info.get("cache"),
                     split_record=info.get("split_record"), original_sizes=original_size_stats(loaded.root))
    if as_json:
        click.echo(json.dumps(stats))
        return
    _print_data_stats(stats)


def _print_data_stats(stats: dict) -> None:
    from rich.table import Table

    from fastcifar.runtime import table_console

    table = Table(title=f"{DATASET_TITLES.get(stats['dataset'], stats['dataset'])} in {stats['root']}")
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
    table_console().print(table)
    if stats.get("original_sizes"):
        sizes = stats["original_sizes"]
        click.echo(f"original sizes: {sizes['count']} images, width {sizes['width']['min']}-{sizes['width']['max']} "
                   f"(median {sizes['width']['median']}), height {sizes['height']['min']}-{sizes['height']['max']} "
                   f"(median {sizes['height']['median']}); stored at {stats['storage_size']} px in {stats['cache']}")
    if stats.get("test_source") and stats["dataset"] == "folder":
        recorded = f" (recorded in {stats['split_record']})" if stats.get("split_record") else ""
        click.echo(f"test split: {stats['test_source']}{recorded}")
    for line in ([stats["skipped_summary"]] if stats.get("skipped_summary") else []) + list(stats.get("notes") or []):
        click.echo(line)
