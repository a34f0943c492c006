"""How good are EfficientNet-Lite0's frozen ImageNet features on a few CIFAR-10 images, per input size?

The network in eval mode (running BatchNorm statistics, no gradients) computes the 1,280 pooled features of the
first N real training images and of the first 1,000 test images once; a linear classifier is trained on the
standardised training features (Adam, full batch) and scored on the test features. Random weights give the floor.
What fine-tuning should at least reach; the compare arm that does this properly is a later issue's.

    python bench/linear_probe.py --data-dir "$FASTCIFAR_DATA" [--images 2000] [--sizes 32,64,96]

Writes bench/results/linear_probe-cpu.json (or --out) with the machine and versions. Results: bench/README.md,
"EfficientNet-Lite0 on the CPU".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STEPS, LR, WEIGHT_DECAY = 300, 1e-3, 1e-4


def features(model, spec, images, batch: int = 250):
    import torch

    from fastcifar.preprocess import normalize_images

    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = normalize_images(images[i:i + batch], spec).contiguous(memory_format=torch.channels_last)
            out.append(model.forward_head(model.forward_features(x), pre_logits=True))
    return torch.cat(out)


def probe(data, n_images: int, size: int, init: str) -> dict:
    import torch
    import torch.nn.functional as F

    from fastcifar.models import create_model

    torch.manual_seed(0)
    model, spec = create_model("efficientnet_lite0", init, "imagenet", image_size=size)
    model = model.eval().to(memory_format=torch.channels_last)
    start = time.perf_counter()
    train_x, test_x = features(model, spec, data.train.images[:n_images]), features(model, spec, data.test.images)
    train_y = torch.as_tensor(data.train.labels[:n_images]).long()
    test_y = torch.as_tensor(data.test.labels).long()
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    head = torch.nn.Linear(train_x.shape[1], 10)
    opt = torch.optim.Adam(head.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    for _ in range(STEPS):
        opt.zero_grad()
        F.cross_entropy(head(train_x), train_y).backward()
        opt.step()
    with torch.no_grad():
        acc = (head(test_x).argmax(1) == test_y).float().mean().item()
    return {"image_size": size, "init": init, "test_acc": acc, "seconds": time.perf_counter() - start}


def main(argv=None) -> int:
    import torch

    from fastcifar.data.cifar import load_cifar10
    from fastcifar.fileio import write_json
    from fastcifar.runtime import cpu_name, package_version

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, help="directory holding cifar-10-batches-py/")
    ap.add_argument("--images", type=int, default=2000, help="first N training images [2000]")
    ap.add_argument("--sizes", default="32,64,96", help="comma-separated input sizes [32,64,96]")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "linear_probe-cpu.json")
    args = ap.parse_args(argv)
    data = load_cifar10(args.data_dir, download=False)
    rows = [probe(data, args.images, int(size), init) for size in args.sizes.split(",") if size.strip()
            for init in ("imagenet", "random")]
    result = {"question": "linear probe on frozen EfficientNet-Lite0 features", "train_images": args.images,
              "test_images": len(data.test.images), "classifier": f"linear, Adam lr {LR}, weight decay "
              f"{WEIGHT_DECAY}, {STEPS} full-batch steps on standardised features", "machine": cpu_name(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "timm": package_version("timm"),
              "date": time.strftime("%Y-%m-%d"), "rows": rows}
    write_json(args.out, result)
    print(f"{args.images} training / {len(data.test.images)} test images, {result['machine']}, torch "
          f"{result['torch']}, timm {result['timm']}")
    for r in rows:
        print(f"{r['image_size']:>4} px  {r['init']:<8}  test {100 * r['test_acc']:5.1f} %  ({r['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
