"""Inference backends suite: parity and speed of torch, torch-compiled, ONNX Runtime and TensorRT.

Question it answers: do the exported backends make the same decisions as the PyTorch fp32 model (top-1
agreement, accuracy drop, |logit diff|), and what do they buy in images/s and batch-1 latency? It is
`fastcifar bench` with fixed settings, so the figures in bench/README.md ("Inference backends") can be reproduced:

    python bench/inference.py --model runs/<trained run> --data-dir ~/data/cifar10
    python bench/inference.py --data-dir ~/data/cifar10        # no run: untrained ResNet-18s, speed only

Without --model it measures freshly initialised ResNet-18s with the CIFAR and the ImageNet stem: speed does not
depend on the weights, and agreement and |logit diff| stay meaningful. Writes bench/results/<name>.json, .md, .png.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from fastcifar.errors import FastCifarError  # noqa: E402


def untrained_models(root: Path) -> list[str]:
    import torch

    from fastcifar.models import create_model, save_model

    paths = []
    for stem in ("cifar", "imagenet"):
        torch.manual_seed(0)
        model, spec = create_model("resnet18", "random", stem)
        paths.append(str(save_model(model.eval(), spec, root / f"resnet18-{stem}-untrained").parent))
    return paths


def main(argv: list[str] | None = None) -> int:
    from fastcifar.bench.tables import markdown
    from fastcifar.bench.harness import BenchConfig, bench, parse_backends, parse_batch_sizes

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="run dir / .onnx (repeat); default: untrained ResNet-18s")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 directory (default: $FASTCIFAR_DATA)")
    parser.add_argument("--backends", default="torch,torch-compiled,onnxruntime,tensorrt")
    parser.add_argument("--batch-sizes", default="1,64,256,1024")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds timed per batch size")
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds, round-robin; the best one counts")
    parser.add_argument("--results-dir", default=str(REPO / "bench" / "results"))
    parser.add_argument("--name", default=None, help="result file stem (default: inference-<models>-<device>)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fastcifar-suite-") as tmp:
        models = args.model or untrained_models(Path(tmp))
        cfg = BenchConfig(models=tuple(models), backends=parse_backends(args.backends),
                          batch_sizes=parse_batch_sizes(args.batch_sizes), data_dir=args.data_dir, download=False,
                          device=args.device, results_dir=args.results_dir, name=args.name,
                          cache_dir=str(Path(tmp) / "cache"), min_time_s=args.min_time, warmup_s=1.0,
                          repeats=args.repeats)
        report = bench(cfg, log=lambda message: print(f"bench: {message}", file=sys.stderr))
    print(markdown(report))
    for file in report.files:
        print(f"wrote {file}", file=sys.stderr)
    return 0 if report.passed else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FastCifarError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(1)
