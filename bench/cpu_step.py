"""Is fastcifar's CPU training slower than a plain torchvision loop on the same machine, and where does it go?

Per variant, in a fresh process, training images per second of `plain` (the textbook torchvision ResNet-18 loop),
`step` (fastcifar's own step on the same batches and model) and `train` (one epoch of `fastcifar train`, smoke
recipe, on the first N real CIFAR-10 images), each with OpenMP's default waiting and with OMP_WAIT_POLICY=PASSIVE,
rounds interleaved; --profile also writes a cProfile of one `train` epoch.

    python bench/cpu_step.py --data-dir ~/data/cifar10 [--rounds 3] [--steps 20] [--images 3000] [--profile P]
    python bench/cpu_step.py --isa avx2      # oneDNN and ATen limited to AVX2, as on a CPU without AVX-512

Writes bench/results/cpu_step-<isa>.json and prints a table with the machine (CPU model and its vector extensions).
Results: bench/README.md, "fastcifar's CPU step vs a plain torchvision loop".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BATCH = 128  # the smoke preset's


def child(kind: str, steps: int, data_dir: str, images: int, profile: str | None) -> dict:
    """One measurement in this (fresh) process."""
    import torch

    torch.manual_seed(0)
    if kind == "train":
        from fastcifar.config import make_train_config
        from fastcifar.train.loop import train

        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            cfg = make_train_config("smoke", {"data_dir": data_dir, "device": "cpu", "epochs": 1, "train_limit": images,
                                              "val_fraction": 0.0, "save_state_every": 0, "save_best": False,
                                              "out": str(Path(tmp) / "run"), "download": False})
            if profile:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            result = train(cfg, progress=False)
            if profile:
                profiler.disable()
                profiler.dump_stats(profile)
        return {"images_per_s": result.summary["images_per_second"], "steps": images // BATCH}
    import torchvision

    x = torch.randn(BATCH, 3, 32, 32)
    y = torch.randint(0, 10, (BATCH,))
    if kind == "plain":
        model = torchvision.models.resnet18(num_classes=10)
        opt = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, nesterov=True, weight_decay=5e-4)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
    else:
        from fastcifar.config import make_train_config
        from fastcifar.models import create_model
        from fastcifar.train.step import autocast_factory, build_optimizer, make_step

        cfg = make_train_config("smoke", {"device": "cpu"}).resolved("cpu")
        model, _ = create_model("resnet18", "random", "imagenet", image_size=32)
        device = torch.device("cpu")
        optimizer, scheduler = build_optimizer(model, cfg, 1000, device)
        run = make_step(model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False),
                        autocast_factory("fp32", device), torch.nn.CrossEntropyLoss())

        def step():
            run(x, y)
    model.train()
    for _ in range(3):  # warm-up: allocator, oneDNN primitives
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    return {"images_per_s": steps * BATCH / seconds, "steps": steps}


def cpu_facts() -> dict:
    from fastcifar.runtime import cpu_name, cpu_vector_extensions

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "vector": cpu_vector_extensions()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="CIFAR-10 [default: $FASTCIFAR_DATA, else ~/.cache/fastcifar]")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20, help="timed steps of the plain and step variants [20]")
    ap.add_argument("--images", type=int, default=3000, help="real images in the train variant's epoch [3000]")
    ap.add_argument("--profile", default=None, help="also write a cProfile of one train epoch here")
    ap.add_argument("--isa", choices=("native", "avx2"), default="native",
                    help="avx2: limit oneDNN and ATen's kernels to AVX2 (ONEDNN_MAX_CPU_ISA, ATEN_CPU_CAPABILITY), as on "
                         "a CPU without AVX-512 or AMX [native]")
    ap.add_argument("--out", type=Path, default=None, help="[bench/results/cpu_step-<isa>.json]")
    ap.add_argument("--child", nargs=1, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.data_dir is None:
        from fastcifar.data.cifar import default_data_dir

        args.data_dir = str(default_data_dir())
    if args.child:
        print(json.dumps(child(args.child[0], args.steps, args.data_dir, args.images, args.profile)))
        return 0
    import torch

    variants = [(kind, policy) for kind in ("plain", "step", "train") for policy in ("default", "PASSIVE")]
    rates: dict[str, list[float]] = {f"{k} {p}": [] for k, p in variants}
    for round_ in range(args.rounds):
        for kind, policy in variants:
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            if args.isa == "avx2":
                env.update(ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2")
            if policy == "PASSIVE":
                env["OMP_WAIT_POLICY"] = "PASSIVE"
            profile = args.profile if (args.profile and kind == "train" and policy == "PASSIVE" and round_ == 0) \
                else None
            cmd = [sys.executable, __file__, "--child", kind, "--steps", str(args.steps), "--images",
                   str(args.images), "--data-dir", args.data_dir] + (["--profile", profile] if profile else [])
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
            if out.returncode != 0:
                print(out.stderr[-2000:], file=sys.stderr)
                return 1
            rate = json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"]
            rates[f"{kind} {policy}"].append(rate)
            print(f"round {round_ + 1}: {kind:5s} {policy:8s} {rate:7.1f} img/s", flush=True)
    facts = cpu_facts()
    median = {k: statistics.median(v) for k, v in rates.items()}
    record = {"question": "fastcifar's CPU training vs a plain torchvision loop", "machine": facts, "isa": args.isa,
              "torch": torch.__version__, "python": platform.python_version(), "batch": BATCH,
              "threads": torch.get_num_threads(), "rounds": args.rounds, "images_per_s": rates, "median": median,
              "vs_plain_default": {k: round(v / median["plain default"], 3) for k, v in median.items()},
              "date": time.strftime("%Y-%m-%d")}
    out = args.out or REPO / "bench" / "results" / f"cpu_step-{args.isa}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"\n{facts['cpu']}, {facts['cores']} cores, {' '.join(facts['vector'])}; kernels: {args.isa}; torch "
          f"{torch.__version__}, batch {BATCH}, median of {args.rounds} rounds")
    print("| variant | OpenMP waiting | img/s | vs plain (default waiting) |\n|---|---|---:|---:|")
    for (kind, policy) in variants:
        key = f"{kind} {policy}"
        print(f"| {kind} | {policy} | {median[key]:.1f} | {record['vs_plain_default'][key]:.2f} |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
