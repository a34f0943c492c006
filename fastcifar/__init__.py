"""fastcifar: ImageNet-pretrained vs from-scratch ResNets on CIFAR-10, trained, exported and served fast.

The package import stays light on purpose (no torch here): `fastcifar --help` and `--version` must be instant.
"""

__version__ = "0.1.0"
