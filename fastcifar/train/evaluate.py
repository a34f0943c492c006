"""Evaluation: loss, accuracy (optionally with flip test-time augmentation) and predictions of a model.

Owns `evaluate(model, loader, ...)` and `parity_metrics` (one set of logits against a reference: the numbers
both the export parity check and the benchmark report). It never touches training state: the model is put in eval mode for
the call and restored to its previous mode afterwards.
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


def evaluate(model, loader, *, tta: bool = False, autocast=contextlib.nullcontext,
             keep_predictions: bool = False) -> EvalResult:
    """Mean cross-entropy and top-1 accuracy over every batch of `loader`.

    tta: average the logits of the image and its horizontal mirror (a standard +0.3-0.5 point on CIFAR).
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
                    logits = model(images)
                    if tta:
                        logits = 0.5 * (logits + model(images.flip(3)))
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


def parity_metrics(logits: np.ndarray, labels: np.ndarray, reference: np.ndarray | None) -> dict:
    """Accuracy of `logits`, and (given the reference logits) agreement, |logit diff| and the accuracy drop."""
    pred = logits.argmax(1)
    out = {"accuracy": float((pred == labels).mean()), "reference_accuracy": None, "accuracy_drop": None,
           "agreement": None, "max_abs_diff": None, "mean_abs_diff": None}
    if reference is not None:
        diff = np.abs(logits.astype(np.float64) - reference.astype(np.float64))
        ref_acc = float((reference.argmax(1) == labels).mean())
        out.update(reference_accuracy=ref_acc, accuracy_drop=round((ref_acc - out["accuracy"]) * 100.0, 6),
                   agreement=float((pred == reference.argmax(1)).mean()),
                   max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()))
    return out
