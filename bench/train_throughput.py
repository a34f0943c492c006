"""Training throughput (images/s) of fastcifar's own step function across the speed switches.

Question: what do channels_last, AMP (bf16/fp16), torch.compile and batch size buy for training? Times the step
`train` runs (`fastcifar.train.step.make_step`) on random device-resident batches, so the loader is out of the
picture; warm-up steps are excluded, GPU timing uses CUDA events. Goal on an H100 (ResNet-18, CIFAR stem, bf16 +
channels_last + compile, batch 1024): >= 80k img/s (bench/README.md, "Training throughput").

    python bench/train_throughput.py                      # CUDA: the full grid; CPU: a reduced grid
    python bench/train_throughput.py --device cpu --steps 10 --batch-sizes 128 --arch resnet18 --stem imagenet
    python bench/train_throughput.py --jsonl bench/results/train_throughput.jsonl   # one line per configuration

--out is written at the end; --jsonl gets each configuration (batch, precision, layout, compile, device, versions)
as one line the moment it is measured, so a run killed by a time limit keeps every figure it measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastcifar.config import TrainConfig  # noqa: E402
from fastcifar.fileio import append_jsonl  # noqa: E402
from fastcifar.runtime import env_info, resolve_device  # noqa: E402
from fastcifar.train.step import autocast_factory, build_optimizer, make_step  # noqa: E402


def measure(arch: str, stem: str, image_size: int, batch: int, precision: str, channels_last: bool,
            compile_model: bool, device, steps: int, warmup: int, compile_mode: str | None = None) -> float:
    """Images/s of `steps` training steps after `warmup` steps."""
    from fastcifar.models import build_resnet

    torch.manual_seed(0)
    model = build_resnet(arch, stem).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    cfg = TrainConfig(arch=arch, stem=stem, image_size=image_size, epochs=1, batch_size=batch,
                      precision=precision, warmup_epochs=0.1)
    optimizer, scheduler = build_optimizer(model, cfg, steps + warmup, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if compile_model:
        model.compile(mode=compile_mode)
    step = make_step(model, optimizer, scheduler, scaler, autocast_factory(precision, device),
                     torch.nn.CrossEntropyLoss(label_smoothing=0.1))
    x = torch.randn(batch, 3, image_size, image_size, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch,), device=device)
    for _ in range(warmup):
        step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            step(x, y)
        end.record()
        torch.cuda.synchronize(device)
        seconds = start.elapsed_time(end) / 1000
    else:
        t0 = time.perf_counter()
        for _ in range(steps):
            loss, _ = step(x, y)
        float(loss)
        seconds = time.perf_counter() - t0
    return steps * batch / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--stem", default="cifar")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch-sizes", default=None, help="comma list [default: 512,1024 on CUDA, 128 on CPU]")
    ap.add_argument("--precisions", default=None, help="comma list [default: bf16,fp16,fp32 on CUDA, fp32,bf16 CPU]")
    ap.add_argument("--steps", type=int, default=None, help="timed steps [default: 50 CUDA, 8 CPU]")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first [default: 15 CUDA, 2 CPU]")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled variants")
    ap.add_argument("--compile-mode", default=None,
                    help="torch.compile mode of the compiled variants, as train's --compile-mode "
                         "(e.g. max-autotune-no-cudagraphs) [default: torch's default]")
    ap.add_argument("--layouts", default="nchw,channels_last", help="comma list of memory formats [both]")
    ap.add_argument("--out", type=Path, default=None, help="JSON path [default: bench/results/train_throughput-<device>.json]")
    ap.add_argument("--jsonl", type=Path, default=None,
                    help="also append each configuration here as one JSON line as soon as it is measured "
                         "[default: off]")
    args = ap.parse_args()
    if args.jsonl is not None:
        try:
            args.jsonl.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            ap.error(f"--jsonl {args.jsonl}: its folder cannot be created: {exc.strerror or exc}")
        if args.jsonl.is_dir():
            ap.error(f"--jsonl {args.jsonl} is a directory")
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # as `fastcifar train` sets it on CUDA (fastcifar/train/loop.py)
    batches = [int(b) for b in (args.batch_sizes or ("512,1024" if cuda else "128")).split(",")]
    precisions = (args.precisions or ("bf16,fp16,fp32" if cuda else "fp32,bf16")).split(",")
    steps, warmup = args.steps or (50 if cuda else 8), args.warmup or (15 if cuda else 2)
    compiles = [False] if args.no_compile else [False, True]
    layouts = [{"nchw": False, "channels_last": True}[name] for name in args.layouts.split(",")]
    env = env_info()
    gpu = env["gpus"][0]["name"] if env["gpus"] else None
    print(f"# training throughput: {args.arch} {args.stem} stem {args.image_size}px on {gpu or platform.processor() or 'CPU'}"
          f" ({env['cpu_count']} cpus), torch {torch.__version__}, steps {steps} after {warmup} warm-up")
    # What every --jsonl line carries besides its configuration: enough to tell its figure from any other run's.
    context = dict(arch=args.arch, stem=args.stem, image_size=args.image_size, steps=steps, warmup=warmup,
                   device=str(device), gpu=gpu, cpu=env["cpu"], cpu_count=env["cpu_count"], host=platform.node(),
                   torch=torch.__version__, cuda=torch.version.cuda)
    rows = []
    for batch, precision, channels_last, compile_model in itertools.product(batches, precisions, layouts, compiles):
        ips = measure(args.arch, args.stem, args.image_size, batch, precision, channels_last, compile_model, device,
                      steps, warmup, args.compile_mode)
        row = dict(batch=batch, precision=precision, channels_last=channels_last, compile=compile_model,
                   images_per_second=round(ips, 1))
        rows.append(row)
        if args.jsonl is not None:
            mode = (args.compile_mode or "default") if compile_model else None
            append_jsonl(args.jsonl, {**row, "compile_mode": mode,
                                      "cudnn_benchmark": bool(torch.backends.cudnn.benchmark), **context})
        print(f"batch {batch:>5}  {precision:>4}  {'channels_last' if channels_last else 'NCHW':>13}  "
              f"{'compiled' if compile_model else 'eager':>8}  {ips:>10,.0f} img/s", flush=True)
    out = args.out or Path(__file__).parent / "results" / f"train_throughput-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"arch": args.arch, "stem": args.stem, "image_size": args.image_size, "steps": steps,
                               "warmup": warmup, "env": env, "results": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
