"""Calibration and accuracy from logits: accuracy, NLL, Brier score, expected calibration error, reliability bins.

ECE uses 15 equal-width confidence bins, the convention of Guo et al. (ICML 2017) and of Hendrycks, Lee and
Mazeika (ICML 2019), whose question - does pretraining buy calibration and robustness beyond accuracy? - is what
`fastcifar evaluate` and the compare report measure. Plain numpy: any backend's logits go in.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (the one implementation: predictors return it as float32)."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)  # shift: exp never overflows
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Per equal-width confidence bin: count, mean confidence, accuracy (None where a bin is empty)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    conf = np.bincount(index, weights=confidence, minlength=bins)
    acc = np.bincount(index, weights=correct.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"edges": edges.tolist(), "count": count.tolist(),
                "confidence": [None if n == 0 else float(c / n) for c, n in zip(conf, count)],
                "accuracy": [None if n == 0 else float(a / n) for a, n in zip(acc, count)]}


def calibration(logits: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """accuracy, nll (mean -log p(true class)), brier (mean squared error of the probability vector), ece, and the
    reliability bins behind the ECE."""
    probs = softmax(logits)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    correct = predicted == labels
    onehot = np.zeros_like(probs)
    onehot[np.arange(n), labels] = 1.0
    rel = reliability(confidence, correct, bins)
    ece = sum(abs(a - c) * k for a, c, k in zip(rel["accuracy"], rel["confidence"], rel["count"]) if k) / max(n, 1)
    return {"n": n, "accuracy": float(correct.mean()),
            "nll": float(-np.log(np.clip(probs[np.arange(n), labels], 1e-12, None)).mean()),
            "brier": float(((probs - onehot) ** 2).sum(axis=1).mean()), "ece": float(ece), "reliability": rel}
