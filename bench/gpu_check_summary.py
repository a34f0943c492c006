"""summary.md of bench/gpu_check.sh: the machine, each step's status, and every figure with what produced it.

    python bench/gpu_check_summary.py OUT_DIR [WORK_DIR] > summary.md

Reads what the check wrote into OUT_DIR (gpu-tests.xml, sweep.jsonl, bench.jsonl, export.json, throughput.jsonl,
loaders.json; any may be missing or cut short) and, when given, the check's work directory (steps.tsv, env.json).
gpu_check.sh reruns it after every step, so a check stopped from outside still leaves a summary of what finished;
run it by hand on a fetched OUT_DIR to redo it. Every figure names its loader, precision, compile mode and cuDNN
setting; the machine line names the GPU, driver and library versions. Standard library plus bench/sweep.py's
table (no torch import), so it runs wherever the check runs.
"""

from __future__ import annotations

import csv
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep import markdown, summarize  # noqa: E402 - the sweep's own per-variant table


def load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_jsonl(path: Path) -> list[dict]:
    """Every complete line of a JSON-lines file (a line cut by a kill is skipped)."""
    rows = []
    try:
        text = path.read_text()
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def machine_lines(env: dict | None) -> list[str]:
    if not env:
        return ["Machine: unknown (no env.json)"]
    gpus = ", ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in env.get("gpus", [])) or \
        f"no GPU; CPU {env.get('cpu')} x {env.get('cpu_count')}"
    versions = ", ".join(f"{k} {env.get(k)}" for k in ("python", "torch", "torchvision", "cuda", "cudnn", "onnx",
                                                         "onnxruntime", "dali", "tensorrt") if env.get(k))
    return [f"Machine: {gpus}; driver {env.get('driver') or '-'}", f"Versions: {versions}; fastcifar at "
            f"{env.get('git_sha') or 'unknown commit'}"]


def steps_lines(work: Path | None) -> list[str]:
    rows = []
    if work is not None and (work / "steps.tsv").is_file():
        with (work / "steps.tsv").open() as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    lines = ["| step | exit | seconds | limit s | note |", "|---|---:|---:|---:|---|"]
    lines += [f"| {r['step']} | {r['rc']} | {r['seconds']} | {r['limit']} | {r.get('note') or ''} |" for r in rows]
    not_ok = [r["step"] for r in rows if r["rc"] != "0"]
    lines += ["", f"Failed, cut, killed or skipped steps: {', '.join(not_ok) if not_ok else 'none'}."]
    return lines if rows else ["(no step record: steps.tsv was not found)"]


def gpu_test_lines(path: Path) -> list[str]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return ["- gpu tests: no result"]
    cases = root.iter("testcase")
    status = {"passed": [], "failed": [], "skipped": []}
    for case in cases:
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        kind = "failed" if case.find("failure") is not None or case.find("error") is not None else \
            "skipped" if case.find("skipped") is not None else "passed"
        status[kind].append(name)
    lines = [f"- gpu tests: {len(status['passed'])} passed, {len(status['failed'])} failed, "
             f"{len(status['skipped'])} skipped"]
    lines += [f"  - {kind}: {name}" for kind in ("failed", "passed") for name in status[kind]]
    return lines


def sweep_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return ["- sweep: no run finished"]
    targets = sorted({r.get("target") for r in rows if r.get("target") is not None})
    lines = []
    for target in targets:
        lines += ["", markdown(summarize([r for r in rows if r.get("target") == target]), target), ""]
    first = next((r for r in rows if r.get("status") == "finished"), None)
    if first:
        lines.append(f"How these ran: {first['device']} ({first['machine']}), {first['loader']} loader, "
                     f"{first['precision']}, channels_last {first['channels_last']}, "
                     + (f"compiled (mode {first.get('compile_mode') or 'default'})" if first["compile"] else "eager")
                     + f", cudnn.benchmark {first.get('cudnn_benchmark')}; "
                     f"batch {first['batch_size']}, {first['n_train']:,} training images. Training seconds exclude "
                     f"compile warm-up (first run {first.get('compile_warmup_seconds') or 0:.1f} s), evaluation and "
                     "state saving.")
    failed = [f"{r['variant']} seed {r['seed']}: {r.get('error')}" for r in rows if r.get("status") != "finished"]
    lines += [f"- failed run: {f}" for f in failed]
    return lines


def bench_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return ["- bench: no result"]
    lines = []
    for r in rows:
        label = r.get("label", r.get("backend"))
        if r.get("status") != "ok":
            lines.append(f"- bench {label}: {r.get('status')}: {r.get('reason')}")
            continue
        speed = ", ".join(f"@{b} {v:,.0f}" for b, v in (r.get("throughput") or {}).items())
        latency = (r.get("latency_ms") or {}).get("p50")
        provider = f", {r['provider']}" if r.get("provider") else ""
        agreement = r.get("agreement")
        lines.append(f"- bench {label} ({r.get('precision')}, {r.get('device')}{provider}): img/s {speed}; batch-1 p50 "
                     f"{'-' if latency is None else f'{latency:.2f}'} ms; agreement "
                     f"{'-' if agreement is None else f'{agreement:.4f}'} with fp32, accuracy "
                     f"{100 * r['accuracy']:.2f} %" + (f"; note: {r['note']}" if r.get("note") else ""))
    lines.append("  Goals (one H100): torch-compiled bf16 >= 250k img/s @1024, <= 0.3 ms batch-1 p50, agreement "
                 ">= 0.995. torch-compiled pads batches to its buckets and runs CUDA graphs on one owner thread.")
    return lines


def export_lines(d: dict | None) -> list[str]:
    if not d:
        return ["- export: no result"]
    lines = []
    for r in d.get("onnx", []):
        p = r.get("parity") or {}
        lines.append(f"- export {Path(r['path']).name}: max |logit diff| {p.get('max_abs_diff', float('nan')):.2g}, "
                     f"agreement {p.get('top1_agreement', float('nan')):.4f} on {p.get('n_images')} test images "
                     f"({p.get('runtime')})")
    if d.get("error"):
        lines.append(f"- export error: {d['error']}")
    return lines or ["- export: nothing exported"]


def throughput_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return ["- train throughput: no result"]
    cells = ", ".join(f"{'channels_last' if r['channels_last'] else 'NCHW'} "
                      f"{'compiled (' + str(r.get('compile_mode') or 'default') + ')' if r['compile'] else 'eager'} "
                      f"{r['images_per_second']:,.0f}" for r in rows)
    r = rows[0]
    return [f"- train throughput (img/s, {r.get('arch')} {r.get('stem')} stem, batch {r['batch']}, {r['precision']}, "
            f"{r.get('gpu') or r.get('device')}, cudnn.benchmark {r.get('cudnn_benchmark')}): {cells}. Earlier H100 "
            "run: 76.6k channels_last compiled."]


def loader_lines(d: dict | None, work: Path | None) -> list[str]:
    if not d:
        return ["- loaders: no result"]
    cells = ", ".join(f"{kind} {r['img_per_s_median']:,} img/s" for kind, r in d["results"].items())
    why = (work / "dali.txt").read_text().strip() if work is not None and (work / "dali.txt").is_file() else ""
    return [f"- loaders on {d['device']}, batch {d['batch_size']}: {cells}" + (f" ({why})" if why else "")]


def render(out: Path, work: Path | None) -> str:
    env = load_json(work / "env.json") if work is not None else None
    lines = ["# fastcifar GPU check", "", *machine_lines(env), "", *steps_lines(work), "", "## Figures", "",
             *gpu_test_lines(out / "gpu-tests.xml"), *sweep_lines(load_jsonl(out / "sweep.jsonl")), "",
             *bench_lines(load_jsonl(out / "bench.jsonl")), *export_lines(load_json(out / "export.json")),
             *throughput_lines(load_jsonl(out / "throughput.jsonl")),
             *loader_lines(load_json(out / "loaders.json"), work)]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    work = Path(argv[1]) if len(argv) == 2 else None
    sys.stdout.write(render(out, work))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
