"""Symmetric label noise for the study's noisy-label axis (`compare --label-noise`, `train --label-noise`).

Owns `noisy_labels`: exactly round(rate * n) of the training pool's labels, chosen at random, each replaced by one of
the *other* classes drawn uniformly (so the share of wrong labels is the rate asked, not rate * (1 - 1/classes) as
when the new label may repeat the old one). Seeded by the run's seed alone: every arm of a seed trains on the same
noisy labels, and the test set is never touched (train/build.py applies it to the pool before the validation split).
"""

from __future__ import annotations

import numpy as np

NOISE_STREAM = 20191  # the noise's own random stream beside the run's split and order ([seed, NOISE_STREAM])


def noisy_labels(labels: np.ndarray, rate: float, seed: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels with round(rate * n) of them replaced by another class, the indices replaced - sorted)."""
    labels = np.asarray(labels)
    if rate <= 0:
        return labels, np.zeros(0, dtype=np.int64)
    if num_classes < 2:
        raise ValueError("label noise needs at least 2 classes")
    rng = np.random.default_rng([seed, NOISE_STREAM])
    flipped = np.sort(rng.choice(len(labels), size=int(round(rate * len(labels))), replace=False))
    # an offset of 1..classes-1 from the true class, modulo classes: uniform over the other classes
    offsets = rng.integers(1, num_classes, size=len(flipped))
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + offsets) % num_classes
    return noisy, flipped
