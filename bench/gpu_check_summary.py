"""summary.md of bench/gpu_check.sh: the machine, each step's planned / given / used seconds, and every figure with
what produced it.

    python bench/gpu_check_summary.py OUT_DIR [WORK_DIR] > summary.md

Reads what the check wrote into OUT_DIR (any file may be missing or cut short) and, when given, its work directory
(per-file JUnit records of the gpu tests without pytest-reportlog). The check reruns it after every step; run it by
hand on a fetched OUT_DIR (or a copy under bench/results/gpu/) to redo it. Standard library plus bench/sweep.py's
table (no torch import), so it runs wherever the check runs.
"""

from __future__ import annotations

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


def steps_lines(rows: list[dict], check: dict | None) -> list[str]:
    if not rows:
        return ["(no step record: steps.jsonl was not found)"]
    budget = f"Budget {check['budget_s']:.0f} s" if check else "Budget unknown"
    lines = [f"{budget}; time a step does not use flows to the steps after it.", "",
             "| step | exit | planned s | given s | used s | note |", "|---|---:|---:|---:|---:|---|"]
    lines += [f"| {r['step']} | {r['rc']} | {r['planned_s']} | {r['limit_s']} | {r['seconds']} | {r.get('note') or ''} |"
              for r in rows]
    not_ok = [r["step"] for r in rows if r["rc"] != 0]
    lines += ["", f"Failed, cut, killed or skipped steps: {', '.join(not_ok) if not_ok else 'none'}."]
    return lines


def setup_lines(setup: dict | None) -> list[str]:
    if not setup:
        return []
    missing = setup.get("missing") or {}
    line = f"- setup: {setup.get('installed_with') or 'nothing installed'}"
    line += f"; still missing: {', '.join(f'{k} ({v})' for k, v in missing.items())}" if missing else \
        "; every module the check uses imports"
    return [line] + [f"  - could not install {f['requirement']}: {f['error'][-200:]}" for f in setup.get("failed", [])]


def gpu_test_lines(out: Path, work: Path | None) -> list[str]:
    """Per test: passed / failed / skipped, from pytest-reportlog's lines (or per-file JUnit records)."""
    outcome: dict[str, str] = {}
    for r in load_jsonl(out / "gpu-tests.jsonl"):
        if r.get("$report_type") != "TestReport":
            continue
        node, when, result = r.get("nodeid"), r.get("when"), r.get("outcome")
        if result == "failed" or (result == "skipped" and when == "setup") or (when == "call" and node not in outcome):
            outcome[node] = result  # a failed teardown fails a passed test; a setup skip is the test's result
    for path in sorted(work.glob("gpu-tests-*.xml")) if work is not None else []:
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError):
            continue
        for case in root.iter("testcase"):
            node = f"{case.get('classname', '')}::{case.get('name')}"
            outcome[node] = "failed" if case.find("failure") is not None or case.find("error") is not None else \
                "skipped" if case.find("skipped") is not None else "passed"
    if not outcome:
        return ["- gpu tests: no result"]
    count = {k: sum(v == k for v in outcome.values()) for k in ("passed", "failed", "skipped")}
    lines = [f"- gpu tests: {count['passed']} passed, {count['failed']} failed, {count['skipped']} skipped"]
    lines += [f"  - {result}: {node}" for node, result in outcome.items() if result != "skipped"]
    return lines


def sweep_lines(rows: list[dict], epochs: list[dict], previous: int) -> list[str]:
    if not rows:
        lines = ["- sweep: no run finished in this check"]
    else:
        lines = []
        for target in sorted({r.get("target") for r in rows if r.get("target") is not None}):
            lines += ["", markdown(summarize([r for r in rows if r.get("target") == target]), target), ""]
        first = next((r for r in rows if r.get("status") == "finished"), None)
        if first:
            lines.append(f"How these ran: {first['device']} ({first['machine']}), {first['loader']} loader, "
                         f"{first['precision']}, channels_last {first['channels_last']}, cudnn.benchmark "
                         f"{first.get('cudnn_benchmark')}; batch {first['batch_size']}, {first['n_train']:,} training "
                         "images. Accuracy runs are eager; a timed run is compiled (its compile warm-up is outside "
                         "the training seconds). Training seconds exclude evaluation and state saving.")
        lines += [f"- failed run: {r['variant']} seed {r['seed']}: {r.get('error')}" for r in rows
                  if r.get("status") != "finished"]
    if previous:
        lines.append(f"- {previous} run(s) measured by earlier GPU runs (bench/results/gpu/) were not run again.")
    finished = {(r["variant"], r["seed"]) for r in rows}
    cut = {}
    for e in epochs:  # runs a limit or a signal cut: their last epoch
        if (e["variant"], e["seed"]) not in finished:
            cut[(e["variant"], e["seed"])] = e
    for (variant, seed), e in cut.items():
        acc = "-" if e.get("test_acc") is None else f"{100 * e['test_acc']:.2f} %"
        lines.append(f"- cut run: {variant} seed {seed} stopped after epoch {e['epoch']} (test {acc}, "
                     f"{e.get('elapsed_train_seconds') or 0:.1f} s of training)")
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


def export_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return ["- export: no result"]
    return [f"- export {r['onnx']} ({r.get('precision')}): max |logit diff| {r.get('max_abs_diff', float('nan')):.2g}, "
            f"agreement {r.get('top1_agreement', float('nan')):.4f} on {r.get('n_images')} test images, "
            + ("passed" if r.get("passed") else "FAILED: " + "; ".join(r.get("failures") or ["?"])) for r in rows]


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


def loader_lines(rows: list[dict], setup: dict | None) -> list[str]:
    if not rows:
        return ["- loaders: no result"]
    cells = ", ".join(f"{r['loader']} {r['img_per_s_median']:,} img/s" for r in rows)
    dali = "" if any(r["loader"] == "dali" for r in rows) else " (DALI did not import: its GPU pipeline is not " \
        "measured; stage it with make gpu-wheels ARGS=--dali)"
    r = rows[0]
    return [f"- loaders on {r['device']}, batch {r['batch_size']}, {r['images']:,} images: {cells}{dali}"]


def render(out: Path, work: Path | None) -> str:
    env, check = load_json(out / "env.json"), load_json(out / "check.json")
    setup = load_json(out / "setup.json")
    sweep = load_jsonl(out / "sweep.jsonl")
    repo = Path(__file__).resolve().parents[1]
    previous = sum(len(load_jsonl(repo / p)) for p in (check or {}).get("previous", []))
    lines = ["# fastcifar GPU check", "", *machine_lines(env), "", *steps_lines(load_jsonl(out / "steps.jsonl"), check),
             "", "## Figures", "", *setup_lines(setup), *gpu_test_lines(out, work),
             *sweep_lines(sweep, load_jsonl(out / "epochs.jsonl"), previous), "",
             *bench_lines(load_jsonl(out / "bench.jsonl")), *export_lines(load_jsonl(out / "export.jsonl")),
             *throughput_lines(load_jsonl(out / "throughput.jsonl")),
             *loader_lines(load_jsonl(out / "loaders.jsonl"), setup)]
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
