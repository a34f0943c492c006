"""How `fastcifar bench` results are shown and kept: the rich table, and JSON + markdown + PNG files.

Owns the presentation of `BenchReport` rows (fastcifar/bench/harness.py) and of a server's load test
(fastcifar/bench/load_test.py), nothing else. Every file is written atomically; the PNG is git-ignored
(bench/results/*.png), the JSON and markdown are the record.
"""

from __future__ import annotations

import io
from pathlib import Path

from fastcifar.fileio import write_bytes, write_json, write_text


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _batch_sizes(rows: list[dict]) -> list[str]:
    sizes = {b for r in rows for b in (r.get("throughput") or {})}
    return sorted(sizes, key=int)


def _status(row: dict) -> str:
    return {"ok": "ok", "skipped": f"skipped: {row['reason']}", "failed": f"FAILED: {row['reason']}"}[row["status"]]


def backend_label(r: dict) -> str:
    """'torch bf16', 'onnxruntime fp32 (CPUExecutionProvider)': what ran, as the row's table cell says it."""
    label = r["backend"] + (f" {r['precision']}" if r.get("precision") else "")
    return label + (f" ({r['provider']})" if r.get("provider") else "")


def table_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, cells) shared by the terminal table and the markdown file."""
    sizes = _batch_sizes(rows)
    header = ["model", "backend", "accuracy", "drop (pts)", "agreement", "max |Δlogit|", "mean |Δlogit|",
              *[f"img/s @{b}" for b in sizes], "p50 / p99 ms @1", "peak MB host / device"]
    cells = []
    for r in rows:
        name = Path(r["model"]).name or r["model"]
        if r["status"] != "ok":
            cells.append([name, backend_label(r), _status(r)] + [""] * (len(header) - 3))
            continue
        h2d = r.get("throughput_h2d") or {}
        speeds = [_fmt(r["throughput"].get(b), ",.0f") +
                  (f" ({_fmt(h2d.get(b), ',.0f')} h2d)" if h2d.get(b) is not None else "") for b in sizes]
        latency = r.get("latency_ms") or {}
        cells.append([
            name, backend_label(r), _fmt(r["accuracy"], ".2%"), _fmt(r["accuracy_drop"], "+.2f"),
            _fmt(r["agreement"], ".4f"), _fmt(r["max_abs_diff"], ".2e"), _fmt(r["mean_abs_diff"], ".2e"), *speeds,
            f"{_fmt(latency.get('p50'), '.2f')} / {_fmt(latency.get('p99'), '.2f')}",
            f"{_fmt(r.get('peak_host_mb'), ',.0f')} / {_fmt(r.get('peak_device_mb'), ',.0f')}",
        ])
    return header, cells


def print_table(report, console=None) -> None:
    """The measured backends as a table, then one 'skipped: why' / 'FAILED: why' line per other backend."""
    from rich.table import Table

    from fastcifar.runtime import table_console

    ok = [r for r in report.rows if r["status"] == "ok"]
    console = console or table_console()  # piped into a file or CI log: never fold the columns
    if ok:
        header, cells = table_rows(ok)
        table = Table(title=f"fastcifar bench on {ok[0]['device']} ({ok[0].get('images', '?')} test images)")
        for i, column in enumerate(header):
            table.add_column(column, justify="left" if i < 2 else "right", no_wrap=i > 0)
        for row in cells:
            table.add_row(*row)
        console.print(table)
    for r in report.rows:
        if r["status"] != "ok":
            console.print(f"{Path(r['model']).name} / {r['label']}: {_status(r)}", markup=False, highlight=False,
                          style="yellow" if r["status"] == "skipped" else "red")
        elif r.get("note"):
            console.print(f"{Path(r['model']).name} / {r['label']}: note: {r['note']}", markup=False, highlight=False,
                          style="yellow")
    for failure in report.failures:
        console.print(f"gate: {failure}", markup=False, highlight=False, style="bold red")


def markdown(report) -> str:
    header, cells = table_rows(report.rows)
    env = report.env
    gpus = ", ".join(g["name"] for g in env.get("gpus", [])) or "none"
    lines = [
        "# fastcifar bench: inference backends", "",
        f"Machine: {env.get('cpu')} x{env.get('cpu_count')} CPU, GPU: {gpus}; {env.get('platform')}", "",
        "Versions: " + ", ".join(f"{k} {env.get(k)}" for k in ("fastcifar", "python", "torch", "cuda", "onnx",
                                                              "onnxruntime", "tensorrt")), "",
        f"Data: {report.rows[0].get('images') if report.rows else 0} test images from {env.get('data_dir')}; "
        f"git {env.get('git_sha') or 'unknown'}; load average {_fmt(env.get('load_avg_start'), '.1f')} at the "
        f"start, {_fmt(env.get('load_avg_end'), '.1f')} at the end; CPU threads per backend: "
        f"{report.config.get('threads') or 'runtime default'}; timed >= {report.config.get('min_time_s')} s per "
        f"batch size", "",
        "| " + " | ".join(h.replace("|", "\\|") for h in header) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|",
        *("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells), "",
        *(f"- {Path(r['model']).name} / {r['label']}: {r['note']}" for r in report.rows if r.get("note")), "",
        "Accuracy: top-1 on the test images, no test-time augmentation. Drop, agreement and |Δlogit|: against "
        "the PyTorch fp32 eager reference. img/s: input already on the device (h2d: with the host-to-device "
        "copy in every call). Latency: batch 1, host pixels in, host logits out. Each backend ran alone in "
        "its own process.", "",
    ]
    if report.failures:
        lines += ["**Gate failed:**", "", *(f"- {f}" for f in report.failures), ""]
    return "\n".join(lines)


def chart_png(report) -> bytes | None:
    """Throughput against batch size, one line per backend, one panel per model (None when nothing was timed)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window, never need a display
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in report.rows if r["status"] == "ok" and r["throughput"]))
    if not models:
        return None
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for r in (r for r in report.rows if r["model"] == model and r["status"] == "ok" and r["throughput"]):
            sizes = sorted(r["throughput"], key=int)
            ax.plot([int(b) for b in sizes], [r["throughput"][b] for b in sizes], marker="o", label=backend_label(r))
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="images / s",
               title=f"{Path(model).name} on {report.rows[0]['device']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_reports(report, results_dir: Path, name: str) -> list[Path]:
    """<name>.json, <name>.md and (when something was timed) <name>.png in `results_dir`."""
    files = [write_json(results_dir / f"{name}.json", report.to_dict()),
             write_text(results_dir / f"{name}.md", markdown(report))]
    png = chart_png(report)
    if png is not None:
        files.append(write_bytes(results_dir / f"{name}.png", png))
    return files


def print_load_table(result: dict) -> None:
    """The load test of a server (fastcifar/bench/load_test.py): one row per level, then one line per level with
    errors."""
    from rich.table import Table

    from fastcifar.runtime import table_console

    table = Table(title=f"load test: {result['model']} at {result['server']} ({result['precision']})")
    for column in ("clients", "batch", "requests", "errors", "images/s", "p50 ms", "p95 ms", "p99 ms",
                   "server batch"):
        table.add_column(column, justify="right")
    for r in result["rows"]:
        table.add_row(str(r["concurrency"]), str(r["batch"]), str(r["requests"]), str(r["errors"]),
                      _fmt(r["images_per_s"], ".1f"), _fmt(r["p50_ms"], ".1f"), _fmt(r["p95_ms"], ".1f"),
                      _fmt(r["p99_ms"], ".1f"), _fmt(r["server_mean_batch"], ".1f"))
    table_console().print(table)
    for r in result["rows"]:
        if r["error_example"]:
            print(f"{r['concurrency']} clients: {r['errors']} errors, e.g. {r['error_example']}")
