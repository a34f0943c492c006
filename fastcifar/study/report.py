"""The compare report: what `fastcifar compare` writes once its runs are done - results.json (the numbers,
results.py), report.md (markdown.py) and each setting's figures (plots.py) - and the terminal summary.
Everything printed or drawn is also in results.json.
"""

from __future__ import annotations

from pathlib import Path

from fastcifar.fileio import write_json, write_text
from fastcifar.study.markdown import pm, render_markdown
from fastcifar.study.plots import PLOTTERS, plot_files
from fastcifar.study.results import fraction_label, is_core


def write_report(out: Path, results: dict) -> list[Path]:
    """results.json, report.md and each setting's plots into `out` (each written atomically); returns the paths."""
    files = [write_json(out / "results.json", results), write_text(out / "report.md", render_markdown(results))]
    sections = results["sections"]
    for section, names in zip(sections, plot_files([s["setting"] for s in sections])):
        view = {**section, "labels": results["labels"],
                # the main figures draw the clean study at the preset's schedule; compute.png and label_noise.png
                # every run (study/plots.py)
                "runs": [r for r in results["runs"] if r["setting"] == section["setting"] and is_core(r)],
                "all_runs": [r for r in results["runs"] if r["setting"] == section["setting"]],
                "study": results.get("study")}
        files += [plotter(view, out / name) for plotter, name in zip(PLOTTERS, names)]
    return files


def print_summary(results: dict, files: list[Path]) -> None:
    from rich.table import Table

    from fastcifar.runtime import table_console

    table = Table(title=f"compare: test accuracy (%), mean ± std over seeds - {results['machine']}")
    for column in ("setting", "training data", "model", "peak lr", "test acc", "train s", "gap (95 % CI)"):
        table.add_column(column, justify="left" if column in ("setting", "training data", "model") else "right")
    gaps = {(g["setting"], g["fraction"]): g for g in results["gaps"]}
    for section in results["sections"]:
        for r in sorted(section["summary"], key=lambda r: (-r["fraction"], r["init"])):
            g = gaps[r["setting"], r["fraction"]]
            ci = "" if g["ci95_low_points"] is None else f" ({g['ci95_low_points']:+.1f}…{g['ci95_high_points']:+.1f})"
            gap = "" if r["init"] != section["pretrained"] else f"{g['gap_points']:+.2f}{ci}"
            table.add_row(r["setting"], fraction_label(r["fraction"], r["n_train"]), r["label"], f"{r['lr']:g}",
                          pm(r["test_acc_mean"], r["test_acc_std"], 100),
                          pm(r["train_seconds_mean"], r["train_seconds_std"], digits=1), gap)
        table.add_section()
    console = table_console()
    console.print(table)
    console.print(results["conclusion"], highlight=False)
    for file in files:
        console.print(f"wrote {file}", highlight=False)
