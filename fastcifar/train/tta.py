"""Evaluation: loss, accuracy (optionally with flip test-time augmentation) and predictions of a model.

Owns `evaluate(model, loader, ...)`. It never touches training state: the model is put in eval mode for the
call and restored to its previous mode afterwards.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np


@dataclass
class EvalResult:
    loss: float
    acc: float
    n: int
    predictions: np.ndarray | None = None  # (n,) predicted class
    labels: np.ndarray | None = None  # (n,) true class

    def as_dict(self, prefix: str) -> dict:
        return {f"{prefix}_loss": self.loss, f"{prefix}_acc": self.acc}


def tta_logits(model, images, *, flip: bool, translate: bool):
    """The model's logits for `images` (NCHW), averaged over test-time views.

    flip: the image and its horizontal mirror, equally weighted (a standard +0.3-0.5 point on CIFAR).
    translate: airbench94's tta_level 2 - half the weight on the (mirrored) image, a quarter each on the image
    shifted one pixel up-left and one pixel down-right (reflect padding, so an image that looks the same
    shifted gives the same logits).
    """
    import torch.nn.functional as F

    def views(x):
        logits = model(x)
        return 0.5 * (logits + model(x.flip(3))) if flip else logits

    logits = views(images)
    if translate:
        h, w = images.shape[-2:]
        padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
        shifted = 0.5 * (views(padded[:, :, :h, :w]) + views(padded[:, :, 2:, 2:]))
        logits = 0.5 * (logits + shifted)
    return logits


def evaluate(model, loader, *, tta: bool = False, translate: bool = False, autocast=contextlib.nullcontext,
             keep_predictions: bool = False) -> EvalResult:
    """Mean cross-entropy and top-1 accuracy over every batch of `loader`.

    tta / translate: the test-time views `tta_logits` averages (flip; 1-px translations).
    autocast: a zero-argument callable returning the precision context used in training.
    """
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64)
    correct = 0
    n = 0
    preds, labels_all = [], []
    try:
        with torch.no_grad():
            for images, labels in loader:
                with autocast():
                    logits = tta_logits(model, images, flip=tta, translate=translate)
                logits = logits.float()
                total_loss += F.cross_entropy(logits, labels, reduction="sum").double().cpu()
                pred = logits.argmax(1)
                correct += int((pred == labels).sum())
                n += len(labels)
                if keep_predictions:
                    preds.append(pred.cpu().numpy())
                    labels_all.append(labels.cpu().numpy())
    finally:
        model.train(was_training)
    return EvalResult(
        loss=float(total_loss) / max(n, 1), acc=correct / max(n, 1), n=n,
        predictions=np.concatenate(preds) if keep_predictions and preds else None,
        labels=np.concatenate(labels_all) if keep_predictions and labels_all else None,
    )
