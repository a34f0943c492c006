"""Time to accuracy of `fastcifar train` on real CIFAR-10: training seconds, test accuracy and seconds to a target.

Question: how fast does a preset reach its accuracy from scratch? Goal for `--preset fast` on one H100: >= 94 % mean
test accuracy over 3 seeds in <= 12 s of training (the first GPU run's figures: bench/README.md, "Time to accuracy
and the presets"). The clock holds the training loop only (airbench's convention): the compile warm-up, reported
beside it, and evaluation are outside. Per seed and as mean ± std: training seconds, final test accuracy (flip
TTA), seconds to the first epoch at --target. The seeds run in one process through bench/sweep.py (one variant).

    python bench/time_to_accuracy.py --data-dir ~/data/cifar10 --preset fast --seeds 3
    python bench/time_to_accuracy.py --data-dir ~/data/cifar10 --preset seed --seeds 1 --target 0.90
    python bench/time_to_accuracy.py --data-dir ~/data/cifar10 --preset fast --set lr=0.2 --set epochs=20
    python bench/time_to_accuracy.py --data-dir ~/data/cifar10 --preset smoke --seeds 1 --device cpu
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep import parse_overrides, pm, run_sweep, single_plan, spread  # noqa: E402 - bench/sweep.py runs them

from fastcifar.errors import FastCifarError  # noqa: E402
from fastcifar.fileio import write_json  # noqa: E402
from fastcifar.runtime import env_info  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--preset", default="fast", help="train preset [fast]")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 [3]")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N [auto]")
    ap.add_argument("--target", type=float, default=0.94, help="test accuracy whose time is reported [0.94]")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a TrainConfig field (repeatable), e.g. --set lr=0.2 --set epochs=20")
    ap.add_argument("--runs-dir", type=Path, default=None,
                    help="keep the run directories here [default: a temporary directory]")
    ap.add_argument("--jsonl", type=Path, default=None,
                    help="append one JSON line per finished seed here as it finishes [default: a temporary file]")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path [default: bench/results/tta-<preset>-<device>.json]")
    args = ap.parse_args()
    try:
        overrides = parse_overrides(args.overrides)
        plan = single_plan(args.preset, args.preset, overrides, args.seeds, args.target)
        with tempfile.TemporaryDirectory() as tmp:
            runs = run_sweep(plan, data_dir=args.data_dir, jsonl=args.jsonl or Path(tmp) / "runs.jsonl",
                             device=args.device, runs_dir=args.runs_dir)
    except FastCifarError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    runs = [r for r in runs if r["status"] == "finished"]
    if not runs:
        print("Error: no run finished", file=sys.stderr)
        return 1
    env = env_info()
    summary = {
        "preset": args.preset, "overrides": overrides, "target": args.target, "n": len(runs),
        "machine": runs[0]["machine"], "test_acc": spread([r["test_acc"] for r in runs]),
        "train_seconds": spread([r["train_seconds"] for r in runs]),
        "seconds_to_target": spread([r["seconds_to_target"] for r in runs]),
        "reached_target": sum(r["seconds_to_target"] is not None for r in runs),
        "cold_compile_seconds": runs[0]["compile_warmup_seconds"],
        "warm_compile_seconds": spread([r["compile_warmup_seconds"] for r in runs[1:]])["mean"],
        "runs": runs, "env": env,
    }
    print(f"# time to accuracy: preset {args.preset} {overrides or ''} on {summary['machine']}, torch {env['torch']}, "
          f"batch {runs[0]['batch_size']}, {runs[0]['epochs']} epochs, {len(runs)} seed(s)")
    print(f"test acc {pm(summary['test_acc'], 100)} %; training {pm(summary['train_seconds'], digits=1)} s; "
          f"{100 * args.target:g} % reached by {summary['reached_target']}/{len(runs)} seeds after "
          f"{pm(summary['seconds_to_target'], digits=1)} s; compile warm-up {summary['cold_compile_seconds'] or 0:.1f} s "
          f"cold, {summary['warm_compile_seconds'] or 0:.1f} s warm (outside the clock)")
    out = args.out or Path(__file__).parent / "results" / f"tta-{args.preset}-{runs[0]['device'].split(':')[0]}.json"
    write_json(out, summary)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
