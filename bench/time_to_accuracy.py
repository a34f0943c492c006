"""Time to accuracy of `fastcifar train` on real CIFAR-10: training seconds, test accuracy and seconds to a target.

Question: how fast does a preset reach its accuracy from scratch? Goal for `--preset fast` on one H100: >= 94 %
mean test accuracy over 3 seeds in <= 12 s of training (ResNet-18, cifar stem, 32 px); the plain anchor recipe
needed 20 epochs / 19.4 s for 93.8 % (../shared/measurements/gpu-2026-11-26.md).

What the clock holds (airbench's convention): the training loop only. torch.compile is warmed up on throw-away
batches before the clock starts (`fastcifar.train.loop.train` does this whenever it compiles) and its cost is
reported beside the figures: the first seed pays the cold compile, later seeds hit the warm cache. Evaluation
after each epoch is outside the clock too. Per seed and as mean ± std: training seconds, final test accuracy
(flip TTA), and the training seconds until the first epoch whose test accuracy reached --target.

    python bench/time_to_accuracy.py --data-dir ../shared/cifar10 --preset fast --seeds 3
    python bench/time_to_accuracy.py --data-dir ../shared/cifar10 --preset seed --seeds 1 --target 0.90
    python bench/time_to_accuracy.py --data-dir ../shared/cifar10 --preset fast --set lr=0.2 --set epochs=20
    python bench/time_to_accuracy.py --data-dir ../shared/cifar10 --preset smoke --seeds 1 --device cpu
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastcifar.config import TrainConfig, make_train_config  # noqa: E402
from fastcifar.fileio import read_jsonl, write_json  # noqa: E402
from fastcifar.runtime import env_info  # noqa: E402
from fastcifar.train.loop import METRICS_FILE, train  # noqa: E402


def parse_overrides(pairs: list[str]) -> dict:
    """`--set lr=0.2 --set zero_init_residual=false` -> TrainConfig overrides, typed like the field's default."""
    types = {f.name: f.type for f in fields(TrainConfig)}
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in types:
            raise SystemExit(f"--set takes KEY=VALUE with a TrainConfig field as KEY, got '{pair}'")
        kind = str(types[key])
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
    return out


def seconds_to_target(metrics: list[dict], target: float) -> float | None:
    """Training seconds at the end of the first epoch whose test accuracy reached `target` (None: never)."""
    return next((m["elapsed_train_seconds"] for m in metrics
                 if m.get("test_acc") is not None and m["test_acc"] >= target), None)


def _spread(values: list) -> dict:
    values = [v for v in values if v is not None]
    return {"mean": statistics.mean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def _pm(spread: dict, scale: float = 1.0, digits: int = 2) -> str:
    if spread["mean"] is None:
        return "-"
    std = "" if spread["std"] is None else f" ± {scale * spread['std']:.{digits}f}"
    return f"{scale * spread['mean']:.{digits}f}{std}"


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
                    help="keep the run directories here (must not exist) [default: a temporary directory]")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path [default: bench/results/tta-<preset>-<device>.json]")
    args = ap.parse_args()
    overrides = parse_overrides(args.overrides)
    env = env_info()
    machine = env["gpus"][0]["name"] if env["gpus"] else f"CPU ({env['cpu_count']} cores)"
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = args.runs_dir or Path(tmp)
        for seed in range(args.seeds):
            cfg = make_train_config(args.preset, {**overrides, "data_dir": args.data_dir, "device": args.device,
                                                  "seed": seed, "out": str(runs_dir / f"seed{seed}"),
                                                  "download": False})
            result = train(cfg, progress="bar" if sys.stderr.isatty() else "lines")
            s, metrics = result.summary, read_jsonl(result.run_dir / METRICS_FILE)
            run = {k: s[k] for k in ("seed", "test_acc", "val_acc", "train_seconds", "images_per_second", "epochs",
                                     "device", "precision", "compile", "channels_last", "loader",
                                     "compile_warmup_seconds", "warnings", "n_train")}
            run.update(batch_size=cfg.batch_size, lr=cfg.lr, seconds_to_target=seconds_to_target(metrics, args.target),
                       epoch1_train_loss=metrics[0]["train_loss"], run_dir=str(result.run_dir))
            runs.append(run)
            reached = run["seconds_to_target"]
            print(f"seed {seed}: test {100 * s['test_acc']:.2f} %, {s['train_seconds']:.1f} s training, "
                  f"{100 * args.target:g} % after {'-' if reached is None else f'{reached:.1f} s'}, compile warm-up "
                  f"{s['compile_warmup_seconds'] or 0:.1f} s, {s['images_per_second']:,.0f} img/s "
                  f"({s['device']}, {s['precision']}, batch {cfg.batch_size})", flush=True)
    summary = {
        "preset": args.preset, "overrides": overrides, "target": args.target, "n": len(runs), "machine": machine,
        "test_acc": _spread([r["test_acc"] for r in runs]), "train_seconds": _spread([r["train_seconds"] for r in runs]),
        "seconds_to_target": _spread([r["seconds_to_target"] for r in runs]),
        "reached_target": sum(r["seconds_to_target"] is not None for r in runs),
        "cold_compile_seconds": runs[0]["compile_warmup_seconds"],
        "warm_compile_seconds": _spread([r["compile_warmup_seconds"] for r in runs[1:]])["mean"],
        "runs": runs, "env": env,
    }
    print(f"# time to accuracy: preset {args.preset} {overrides or ''} on {machine}, torch {env['torch']}, "
          f"batch {runs[0]['batch_size']}, {runs[0]['epochs']} epochs, {len(runs)} seed(s)")
    print(f"test acc {_pm(summary['test_acc'], 100)} %; training {_pm(summary['train_seconds'], digits=1)} s; "
          f"{100 * args.target:g} % reached by {summary['reached_target']}/{len(runs)} seeds after "
          f"{_pm(summary['seconds_to_target'], digits=1)} s; compile warm-up {summary['cold_compile_seconds'] or 0:.1f} s "
          f"cold, {summary['warm_compile_seconds'] or 0:.1f} s warm (outside the clock)")
    out = args.out or Path(__file__).parent / "results" / f"tta-{args.preset}-{runs[0]['device'].split(':')[0]}.json"
    write_json(out, summary)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
