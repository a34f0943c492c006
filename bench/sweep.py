"""A recipe sweep in one process: many `fastcifar train` variants x seeds, one JSON line per finished run.

Question: which recipe reaches 94 % on CIFAR-10 fastest? GPU time comes ~15 minutes at a time, so the next GPU run
edits a variants file, not code. What one process buys: CIFAR-10 is read from disk once for every run (each run
still copies its training split to the device, ~150 MB); torch.compile's caches are warm after the first run, so
later runs pay a warm compile (measured 3.2 s vs 17 s cold on an H100), reported apart from the training clock.
Each finished run is appended to --jsonl at once (a sweep killed by its time limit keeps every run it finished),
and a rerun with the same --jsonl skips the (variant, seed) pairs already there.

Variants file (JSON; bench/variants/gpu.json is the GPU check's):
    {"target": 0.94,
     "variants": [{"name": "fast", "preset": "fast", "seeds": 2, "set": {}},
                  {"name": "fast+ls0.2", "preset": "fast", "seeds": 2, "set": {"label_smoothing": 0.2}}]}
`set` holds TrainConfig overrides (any field: lr, epochs, ema, whiten_stem, ...); `seeds` runs seeds 0..N-1.

Per run (one JSON line): test/val accuracy, training seconds (the loop only: compile warm-up, evaluation and
state saving are outside it and reported apart), seconds to --target, the epoch-1 training loss, images/s, and what
made the figure: loader, precision, compile and its mode, channels_last, cudnn.benchmark, device/GPU, batch, lr,
epochs, levers, torch version. At the end, per variant: accuracy per seed and mean ± std, training seconds, time to
target, epoch-1 loss (markdown on stdout, and --summary-out as JSON).

    python bench/sweep.py --data-dir ../shared/cifar10 --variants bench/variants/gpu.json --jsonl sweep.jsonl
    python bench/sweep.py --data-dir ../shared/cifar10 --variants V.json --jsonl s.jsonl --device cpu \\
        --set train_limit=2000 --set stem=imagenet        # toy sizes on a CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastcifar.config import TrainConfig, make_train_config  # noqa: E402
from fastcifar.errors import FastCifarError  # noqa: E402
from fastcifar.fileio import append_jsonl, read_jsonl, write_json  # noqa: E402
from fastcifar.runtime import env_info  # noqa: E402

RUN_KEYS = ("seed", "test_acc", "val_acc", "train_seconds", "images_per_second", "epochs", "device", "precision",
            "compile", "compile_mode", "channels_last", "loader", "cudnn_benchmark", "compile_warmup_seconds",
            "state_save_seconds", "warnings", "levers", "n_train")


def parse_overrides(pairs: list[str]) -> dict:
    """`--set lr=0.2 --set zero_init_residual=false` -> TrainConfig overrides, typed like the field's default."""
    types = {f.name: str(f.type) for f in fields(TrainConfig)}
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in types:
            raise FastCifarError(f"--set takes KEY=VALUE with a TrainConfig field as KEY, got '{pair}'")
        kind = types[key]
        try:
            if text.lower() in ("none", "null"):
                out[key] = None
            elif "bool" in kind:
                out[key] = text.lower() in ("1", "true", "yes", "on")
            elif "int" in kind:
                out[key] = int(text)
            elif "float" in kind:
                out[key] = float(text)
            else:
                out[key] = text
        except ValueError:
            raise FastCifarError(f"--set {key}: '{text}' is not a valid {kind}") from None
    return out


def load_variants(path: Path) -> tuple[list[dict], float | None]:
    """The variants of a sweep file, each checked: a name, a preset, seeds >= 1, overrides TrainConfig knows."""
    try:
        spec = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise FastCifarError(f"cannot read the variants file {path}: {exc}") from None
    variants = spec.get("variants") if isinstance(spec, dict) else None
    if not isinstance(variants, list) or not variants:
        raise FastCifarError(f"{path} needs a non-empty 'variants' list")
    names = set()
    known = {f.name for f in fields(TrainConfig)}
    for v in variants:
        unknown = set(v.get("set", {})) - known
        if not v.get("name") or v["name"] in names or int(v.get("seeds", 1)) < 1 or unknown:
            raise FastCifarError(f"{path}: bad variant {v} (each needs a unique name, seeds >= 1 and TrainConfig "
                                 f"fields in 'set'{'; unknown: ' + ', '.join(sorted(unknown)) if unknown else ''})")
        names.add(v["name"])
    return variants, spec.get("target")


def seconds_to_target(metrics: list[dict], target: float) -> float | None:
    """Training seconds at the end of the first epoch whose test accuracy reached `target` (None: never)."""
    return next((m["elapsed_train_seconds"] for m in metrics
                 if m.get("test_acc") is not None and m["test_acc"] >= target), None)


def recipe_key(variant: dict, base: dict) -> str:
    """12 hex digits naming what a (variant, seed) line was trained with: preset, its overrides and the sweep's."""
    import hashlib

    recipe = {"preset": variant.get("preset"), "set": variant.get("set", {}),
              "base": {k: v for k, v in base.items() if k != "data_dir"}}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def run_one(variant: dict, seed: int, *, base: dict, target: float, runs_dir: Path, dataset, machine: str) -> dict:
    """Train one (variant, seed) and return its JSON line; a run that fails returns a 'failed' line."""
    import shutil

    from fastcifar.rundir import read_metrics
    from fastcifar.train.loop import train

    out = runs_dir / variant["name"] / f"seed{seed}"
    if out.exists():  # what an earlier, cut or failed attempt left: sweep runs keep no state to resume from
        shutil.rmtree(out)
    overrides = {**variant.get("set", {}), **base, "seed": seed, "out": str(out)}
    overrides.setdefault("save_state_every", 0)  # benchmark runs are never resumed: no ~90 MB write per epoch
    overrides.setdefault("save_best", False)  # nor served: no best-checkpoint write per improvement
    line = {"variant": variant["name"], "preset": variant.get("preset"), "set": variant.get("set", {}),
            "seed": seed, "target": target, "machine": machine, "recipe": recipe_key(variant, base)}
    start = time.perf_counter()
    try:
        cfg = make_train_config(variant.get("preset"), overrides)
        result = train(cfg, progress="bar" if sys.stderr.isatty() else "lines", dataset=dataset)
    except (FastCifarError, RuntimeError, ValueError) as exc:  # a diverged or broken variant: the sweep goes on
        if getattr(exc, "exit_code", None) == 130:  # Ctrl-C inside the run: stop the sweep, not just this run
            raise KeyboardInterrupt from None
        traceback.print_exc(file=sys.stderr)
        return {**line, "status": "failed", "error": f"{type(exc).__name__}: {exc}"[:500],
                "wall_seconds": time.perf_counter() - start}
    s = result.summary
    metrics = read_metrics(result.run_dir)
    line.update({k: s.get(k) for k in RUN_KEYS})
    line.update(status="finished", batch_size=cfg.batch_size, lr=cfg.lr, seconds_to_target=seconds_to_target(
        metrics, target), epoch1_train_loss=metrics[0]["train_loss"], test_acc_per_epoch=[m.get("test_acc") for m in
        metrics], wall_seconds=time.perf_counter() - start, run_dir=str(result.run_dir))
    return line


def spread(values: list) -> dict:
    values = [v for v in values if v is not None]
    return {"mean": statistics.mean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def pm(s: dict, scale: float = 1.0, digits: int = 2) -> str:
    if s["mean"] is None:
        return "-"
    return f"{scale * s['mean']:.{digits}f}" + ("" if s["std"] is None else f" ± {scale * s['std']:.{digits}f}")


def summarize(lines: list[dict]) -> list[dict]:
    """Per variant, in first-seen order: seeds, accuracy per seed and mean ± std, seconds, time to target."""
    latest = {(line["variant"], line["seed"]): line for line in lines}  # a retried pair counts once: its last line
    out: dict[str, dict] = {}
    for line in latest.values():
        v = out.setdefault(line["variant"], {"variant": line["variant"], "set": line.get("set", {}), "runs": []})
        v["runs"].append(line)
    for v in out.values():
        done = [r for r in v["runs"] if r.get("status") == "finished"]
        v.update(finished=len(done), failed=len(v["runs"]) - len(done),
                 test_acc_per_seed={r["seed"]: r["test_acc"] for r in done},
                 test_acc=spread([r["test_acc"] for r in done]),
                 train_seconds=spread([r["train_seconds"] for r in done]),
                 seconds_to_target=spread([r["seconds_to_target"] for r in done]),
                 reached_target=sum(r["seconds_to_target"] is not None for r in done),
                 epoch1_train_loss=[r["epoch1_train_loss"] for r in done])
        del v["runs"]
    return list(out.values())


def markdown(summary: list[dict], target: float) -> str:
    rows = ["| variant | runs | test acc % (mean ± std) | per seed | training s | "
            f"reached {100 * target:g} % | s to {100 * target:g} % | epoch-1 loss |",
            "|---|---:|---:|---|---:|---:|---:|---|"]
    for v in summary:
        seeds = ", ".join(f"{s}: {100 * a:.2f}" for s, a in v["test_acc_per_seed"].items())
        failed = f" ({v['failed']} failed)" if v["failed"] else ""
        rows.append(f"| {v['variant']} | {v['finished']}{failed} | {pm(v['test_acc'], 100)} | {seeds} | "
                    f"{pm(v['train_seconds'], digits=1)} | {v['reached_target']}/{v['finished']} | "
                    f"{pm(v['seconds_to_target'], digits=1)} | {', '.join(f'{x:.2f}' for x in v['epoch1_train_loss'])} |")
    return "\n".join(rows)


def run_sweep(variants: list[dict], *, data_dir: str, jsonl: Path, device: str = "auto", target: float = 0.94,
              base_overrides: dict | None = None, runs_dir: Path | None = None,
              log=lambda message: print(message, file=sys.stderr, flush=True)) -> list[dict]:
    """Run every (variant, seed) not already in `jsonl`, appending each result line as it finishes; returns all
    lines of `jsonl` for these variants (earlier ones included)."""
    from fastcifar.data.cifar import load_cifar10

    base = {**(base_overrides or {}), "data_dir": data_dir, "device": device, "download": False}
    # A line counts as done only for the same recipe: an edited variant or other --set values run again.
    done = {(r["variant"], r["seed"], r.get("recipe")) for r in read_jsonl(jsonl) if r.get("status") == "finished"}
    todo = [(v, seed) for v in variants for seed in range(int(v.get("seeds", 1)))
            if (v["name"], seed, recipe_key(v, base)) not in done]
    env = env_info()
    machine = env["gpus"][0]["name"] if env["gpus"] else f"CPU ({env['cpu_count']} cores)"
    if todo:
        dataset = load_cifar10(data_dir, download=False, progress=False)  # read once for every run
        log(f"sweep: {len(todo)} run(s) to do, {len(done)} already in {jsonl}; {machine}, torch {env['torch']}")
        with tempfile.TemporaryDirectory() as tmp:
            where = runs_dir or Path(tmp)
            for i, (variant, seed) in enumerate(todo, 1):
                log(f"sweep: run {i}/{len(todo)}: {variant['name']} seed {seed}")
                line = run_one(variant, seed, base=base, target=target, runs_dir=where, dataset=dataset,
                               machine=machine)
                append_jsonl(jsonl, line)
                acc = "failed" if line["status"] != "finished" else f"{100 * line['test_acc']:.2f} %"
                log(f"sweep: {variant['name']} seed {seed}: {acc}")
    keys = {(v["name"], recipe_key(v, base)) for v in variants}
    return [r for r in read_jsonl(jsonl) if (r["variant"], r.get("recipe")) in keys]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="directory holding cifar-10-batches-py/")
    ap.add_argument("--variants", type=Path, required=True, help="variants file (JSON, see above)")
    ap.add_argument("--jsonl", type=Path, required=True, help="one JSON line per finished run (appended; resumes)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N [auto]")
    ap.add_argument("--target", type=float, default=None,
                    help="test accuracy whose time is reported [the file's 'target', else 0.94]")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a TrainConfig field in every variant (repeatable): toy sizes for a CPU dry run")
    ap.add_argument("--runs-dir", type=Path, default=None,
                    help="keep run directories here as VARIANT/seedN [default: a temporary directory]")
    ap.add_argument("--summary-out", type=Path, default=None, help="also write the per-variant summary as JSON")
    args = ap.parse_args(argv)
    try:
        variants, file_target = load_variants(args.variants)
        target = args.target if args.target is not None else (file_target or 0.94)
        lines = run_sweep(variants, data_dir=args.data_dir, jsonl=args.jsonl, device=args.device, target=target,
                          base_overrides=parse_overrides(args.overrides), runs_dir=args.runs_dir)
    except FastCifarError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    summary = summarize(lines)
    print(markdown(summary, target))
    if args.summary_out:
        write_json(args.summary_out, {"target": target, "variants": summary})
    return 0 if all(v["failed"] == 0 for v in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
