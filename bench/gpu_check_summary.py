"""The closing table of bench/gpu_check.sh: each step's status and the figures that answer its question.

    python bench/gpu_check_summary.py OUT_DIR STEPS_TSV ENV_TXT VARIANTS_DIR LOADERS_JSON > OUT_DIR/summary.md

Reads the JSON files the check wrote into OUT_DIR (any may be missing or empty: a failed step) and prints
markdown: the machine, one row per step (exit code, seconds) and one line per measured figure with its goal.
Standard library only, so it runs wherever the check runs.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def pm(spread: dict | None, scale: float = 1.0, digits: int = 2) -> str:
    if not spread or spread.get("mean") is None:
        return "-"
    std = "" if spread.get("std") is None else f" ± {scale * spread['std']:.{digits}f}"
    return f"{scale * spread['mean']:.{digits}f}{std}"


def tta_lines(name: str, d: dict | None, goal: str) -> list[str]:
    if not d:
        return [f"- {name}: no result"]
    runs = d["runs"]
    first = runs[0]
    warned = sum(bool(r["warnings"]) for r in runs)
    return [f"- {name} ({d['n']} seed(s), batch {first['batch_size']}, lr {first['lr']:g}, {first['epochs']} epochs, "
            f"{first['n_train']:,} training images, {first['device']}, {first['precision']}, compile "
            f"{first['compile']}): test accuracy **{pm(d['test_acc'], 100)} %**, training **{pm(d['train_seconds'], digits=1)} s**, "
            f"{100 * d['target']:g} % reached by {d['reached_target']}/{d['n']} seed(s) after "
            f"{pm(d['seconds_to_target'], digits=1)} s; compile warm-up {d['cold_compile_seconds'] or 0:.1f} s cold / "
            f"{d['warm_compile_seconds'] or 0:.1f} s warm (outside the clock); epoch-1 training loss "
            + ", ".join(f"{r['epoch1_train_loss']:.2f}" for r in runs)
            + f"; divergence warnings in {warned} run(s). Goal: {goal}."]


def compare_lines(d: dict | None) -> list[str]:
    if not d:
        return ["- compare: no result"]
    lines = []
    for section in d["sections"]:
        rows = ", ".join(f"{r['label']} {100 * r['fraction']:g} %: {pm({'mean': r['test_acc_mean'], 'std': r['test_acc_std']}, 100)} % "
                         f"(lr {r['lr']:g})" for r in section["summary"])
        lines.append(f"- compare {section['setting']}: {rows}")
        for init, arm in (section.get("lr_selection") or {}).items():
            vals = ", ".join(f"{lr:g}: {100 * v:.1f} %" for lr, v in zip(arm["grid"], arm["val_acc"]))
            lines.append(f"  - lr selection, {init}: chose {arm['chosen']:g} (validation accuracy {vals})")
    return lines


def throughput_lines(d: dict | None) -> list[str]:
    if not d:
        return ["- train throughput: no result"]
    cells = ", ".join(f"{'channels_last' if r['channels_last'] else 'NCHW'} {'compiled' if r['compile'] else 'eager'} "
                      f"{r['images_per_second']:,.0f}" for r in d["results"])
    batch = d["results"][0]["batch"] if d["results"] else "-"
    return [f"- train throughput (img/s, {d['arch']} {d['stem']} stem, batch {batch}, "
            f"{d['results'][0]['precision'] if d['results'] else '-'}): {cells}. Earlier H100 run: 76.6k channels_last "
            "compiled."]


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


def bench_lines(rows: list | None) -> list[str]:
    if not rows:
        return ["- bench: no result"]
    lines = []
    for r in rows:
        label = r.get("label", r["backend"])
        if r["status"] != "ok":
            lines.append(f"- bench {label}: {r['status']}: {r.get('reason')}")
            continue
        speed = ", ".join(f"@{b} {v:,.0f}" for b, v in (r.get("throughput") or {}).items())
        latency = (r.get("latency_ms") or {}).get("p50")
        provider = f", {r['provider']}" if r.get("provider") else ""
        lines.append(f"- bench {label} ({r.get('precision')}, {r['device']}{provider}): img/s {speed}; batch-1 p50 "
                     f"{'-' if latency is None else f'{latency:.2f}'} ms; agreement {r['agreement']:.4f} with fp32, "
                     f"accuracy {100 * r['accuracy']:.2f} %" + (f"; note: {r['note']}" if r.get("note") else ""))
    lines.append("  Goals (one H100): torch-compiled bf16 >= 250k img/s @1024, <= 0.3 ms batch-1 p50, agreement "
                 ">= 0.995.")
    return lines


def loader_lines(d: dict | None) -> list[str]:
    if not d:
        return ["- loaders: no result"]
    cells = ", ".join(f"{kind} {r['img_per_s_median']:,} img/s" for kind, r in d["results"].items())
    missing = "" if "dali" in d["results"] else " (DALI not installed: its GPU pipeline not measured)"
    return [f"- loaders on {d['device']}, batch {d['batch_size']}: {cells}{missing}"]


def main() -> int:
    out, steps_file, env_file, variants, loaders = (Path(a) for a in sys.argv[1:6])
    with steps_file.open() as f:
        steps = list(csv.DictReader(f, delimiter="\t"))
    env = env_file.read_text().splitlines() if env_file.is_file() else []
    failed = [s["step"] for s in steps if s["rc"] != "0"]
    lines = ["# fastcifar GPU check", "", f"Machine: {env[0] if env else 'unknown'}", "",
             "| step | exit | seconds |", "|---|---:|---:|",
             *[f"| {s['step']} | {s['rc']} | {s['seconds']} |" for s in steps], "",
             "## Figures", "",
             *tta_lines("fast preset", load(out / "tta-fast.json"), ">= 94 % mean over 3 seeds in <= 12 s of training"),
             *tta_lines("seed preset", load(out / "tta-seed.json"), "the plain anchor reached 91.1 % in 10 epochs"),
             *[line for f in sorted(variants.glob("*.json")) for line in
               tta_lines(f"fast preset with {f.stem}={(load(f) or {}).get('overrides', {}).get(f.stem)}", load(f),
                         "compare with the fast preset's seed 0")],
             *compare_lines(load(out / "compare-results.json")),
             *throughput_lines(load(out / "train-throughput.json")),
             *export_lines(load(out / "export.json")),
             *bench_lines(load(out / "bench.json")),
             *loader_lines(load(loaders)), "",
             f"Failed or skipped steps: {', '.join(failed) if failed else 'none'}."]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
