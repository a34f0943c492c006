"""How fast do EfficientNet-Lite0 and ResNet-18 train and infer on this machine, at the sizes the studies use?

In one process, rounds interleaved so both networks see the same load: training images/s (SGD step, fp32, batch 64,
random data) and inference images/s (eval, no grad, batch 256) per (arch, stem, image size, memory format). Ratios
from the same run are the result; absolute figures move with the machine's load.

    python bench/arch_speed.py [--rounds 3] [--steps 4] [--sizes 32,64,96]

Writes bench/results/arch_speed-cpu.json (or --out) with the machine, its vector extensions, torch and threads.
Results: bench/README.md, "EfficientNet-Lite0 vs ResNet-18 speed".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TRAIN_BATCH, INFER_BATCH = 64, 256


def variants(sizes: list[int]) -> list[tuple[str, str, int, bool]]:
    out = [("resnet18", "imagenet", 32, False), ("resnet18", "imagenet", 32, True)]  # the ResNet smoke setting
    for size in sizes:
        out += [("efficientnet_lite0", "imagenet", size, False), ("efficientnet_lite0", "imagenet", size, True)]
    return out


def rates(arch: str, stem: str, size: int, channels_last: bool, steps: int) -> tuple[float, float]:
    """(training img/s, inference img/s) of one fresh model."""
    import torch

    from fastcifar.models import create_model

    torch.manual_seed(0)
    model, _ = create_model(arch, "random", stem, image_size=size)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    x = torch.randn(TRAIN_BATCH, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (TRAIN_BATCH,))
    for i in range(steps + 1):  # one untimed step first
        if i == 1:
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    train = steps * TRAIN_BATCH / (time.perf_counter() - start)
    model.eval()
    xi = torch.randn(INFER_BATCH, 3, size, size).contiguous(memory_format=fmt)
    with torch.no_grad():
        model(xi)
        start = time.perf_counter()
        for _ in range(2):
            model(xi)
    return train, 2 * INFER_BATCH / (time.perf_counter() - start)


def main(argv=None) -> int:
    import torch

    from fastcifar.fileio import write_json
    from fastcifar.runtime import cpu_name, cpu_vector_extensions

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="timed training steps per measurement [4]")
    ap.add_argument("--sizes", default="32,64,96", help="EfficientNet-Lite0 image sizes [32,64,96]")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "arch_speed-cpu.json")
    args = ap.parse_args(argv)
    plan = variants([int(s) for s in args.sizes.split(",") if s.strip()])
    samples: dict[tuple, list] = {v: [] for v in plan}
    for r in range(args.rounds):
        for v in plan:
            samples[v].append(rates(*v, args.steps))
            print(f"round {r + 1}: {v[0]} {v[2]} px {'channels_last' if v[3] else 'NCHW'}: "
                  f"train {samples[v][-1][0]:.0f} img/s, infer {samples[v][-1][1]:.0f} img/s", file=sys.stderr)
    base = statistics.median(t for t, _ in samples[plan[0]]), statistics.median(i for _, i in samples[plan[0]])
    rows = []
    for (arch, stem, size, cl), vals in samples.items():
        train, infer = statistics.median(t for t, _ in vals), statistics.median(i for _, i in vals)
        rows.append({"arch": arch, "stem": stem, "image_size": size, "channels_last": cl, "train_img_s": train,
                     "infer_img_s": infer, "train_vs_resnet18_32px": train / base[0],
                     "infer_vs_resnet18_32px": infer / base[1]})
    isa = cpu_vector_extensions()
    result = {"question": "training and inference img/s of EfficientNet-Lite0 vs ResNet-18 on this CPU",
              "machine": cpu_name(), "isa": isa, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "train_batch": TRAIN_BATCH, "infer_batch": INFER_BATCH, "rounds": args.rounds, "steps": args.steps,
              "precision": "fp32 eager", "date": time.strftime("%Y-%m-%d"), "rows": rows}
    write_json(args.out, result)
    print(f"{result['machine']} ({', '.join(isa)}), {result['threads']} threads, torch {result['torch']}, fp32 eager, "
          f"train batch {TRAIN_BATCH}, infer batch {INFER_BATCH}, median of {args.rounds} interleaved rounds")
    print("arch                size  format         train img/s  (x r18)  infer img/s  (x r18)")
    for r in rows:
        print(f"{r['arch']:<19} {r['image_size']:>4}  {'channels_last' if r['channels_last'] else 'NCHW':<13} "
              f"{r['train_img_s']:>11.0f}  {r['train_vs_resnet18_32px']:>7.2f}  {r['infer_img_s']:>11.0f}  "
              f"{r['infer_vs_resnet18_32px']:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
