"""Time to accuracy of `fastcifar train` on real CIFAR-10: test accuracy and training seconds over seeds.

Question: how fast does a preset reach its accuracy from scratch? The goal for `--preset fast` on an H100 is
>= 94 % test accuracy in <= 15 s of training (ResNet-18, cifar stem, 32 px); DESIGN.md's plain recipe
needed 19 s for 93.8 %. Training seconds exclude evaluation; the first epoch includes torch.compile.

    python bench/time_to_accuracy.py --data-dir ../shared/cifar10 --preset fast --seeds 3
    python bench/time_to_accuracy.py --data-dir ../shared/cifar10 --preset smoke --seeds 1 --device cpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastcifar.config import make_train_config  # noqa: E402
from fastcifar.runtime import env_info  # noqa: E402
from fastcifar.train import train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    ap.add_argument("--out", type=Path, default=None, help="JSON path [default: bench/results/tta-<preset>.json]")
    args = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            cfg = make_train_config(args.preset, dict(data_dir=args.data_dir, device=args.device, seed=seed,
                                                      epochs=args.epochs, out=f"{tmp}/run{seed}", download=False))
            s = train(cfg, progress=sys.stderr.isatty()).summary
            runs.append({k: s[k] for k in ("seed", "test_acc", "val_acc", "train_seconds", "images_per_second",
                                           "epochs", "device", "precision", "compile", "channels_last")})
            print(f"seed {seed}: test {100 * s['test_acc']:.2f} %  train {s['train_seconds']:.1f} s  "
                  f"{s['images_per_second']:,.0f} img/s ({s['device']}, {s['precision']})", flush=True)
    accs = [r["test_acc"] for r in runs]
    secs = [r["train_seconds"] for r in runs]
    summary = {"preset": args.preset, "n": len(runs), "test_acc_mean": statistics.mean(accs),
               "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else None,
               "train_seconds_mean": statistics.mean(secs), "runs": runs, "env": env_info()}
    print(f"mean test acc {100 * summary['test_acc_mean']:.2f} % over {len(runs)} seeds, "
          f"mean training time {summary['train_seconds_mean']:.1f} s")
    out = args.out or Path(__file__).parent / "results" / f"tta-{args.preset}-{runs[0]['device'].split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
