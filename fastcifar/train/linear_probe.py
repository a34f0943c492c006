"""The linear-probe arm (`train --linear-probe`, `compare --arms ...,linear-probe,...`): Kornblith et al.'s
fixed-feature setting - the pretrained backbone frozen, in eval mode (its BatchNorm statistics are ImageNet's),
its features computed once per image and cached, and only the classifier trained on them for the run's epochs.

Owns `attach(model, data, cfg, device)`: it freezes every tensor but the classifier and swaps the run's loaders for
loaders over cached features, so the rest of the loop (optimizer, schedule, records, state, resume, summary) is the
one every run uses, and the saved model is the whole network - backbone plus trained head - that predict, export
and the robustness evaluation load like any other.

Why the features are cached without augmentation: a random crop or flip of an image gives another feature vector,
so an augmented probe would pay a backbone forward per image per epoch - the fine-tuning cost it is meant to avoid.
The evaluation keeps the run's flip TTA: each test and validation image's mirrored view is cached beside it and the
head's logits are averaged over both, exactly what the whole network with flip TTA computes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fastcifar.data.loader_contract import LoaderOptions, epoch_plan, num_batches
from fastcifar.errors import FastCifarError
from fastcifar.models import CLASSIFIERS


def classifier_of(model):
    """The network's last layer (a ResNet's `fc`, EfficientNet's `classifier`)."""
    for name in CLASSIFIERS:
        if hasattr(model, name):
            return getattr(model, name)
    raise FastCifarError(f"{type(model).__name__} has no classifier named {' or '.join(CLASSIFIERS)}")


def extract(model, loader, *, views: int, autocast):
    """(features (N, views, D) float32, labels (N,)) of every image `loader` yields: the classifier's input, with the
    whole network in eval mode and no grad; views=2 adds each image's mirror image."""
    import torch

    head = classifier_of(model)
    captured = []
    hook = head.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach().float()))
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        with torch.no_grad():
            for images, y in loader:
                captured.clear()
                with autocast():
                    model(images)
                    if views == 2:
                        model(images.flip(3))
                feats.append(torch.stack(captured, dim=1).flatten(2))
                labels.append(y)
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(feats), torch.cat(labels)


class ProbeHead:
    """The classifier applied to cached features: (B, D) -> logits; (B, V, D) -> logits averaged over the V views
    (flip TTA on cached features). A callable with the module interface evaluate() uses (eval, train, training)."""

    def __init__(self, classifier):
        self.classifier = classifier

    @property
    def training(self) -> bool:
        return self.classifier.training

    def eval(self):
        self.classifier.eval()
        return self

    def train(self, mode: bool = True):
        self.classifier.train(mode)
        return self

    def __call__(self, x):
        if x.dim() == 3:
            b, v, d = x.shape
            return self.classifier(x.reshape(b * v, d)).view(b, v, -1).mean(1)
        return self.classifier(x)


class CachedFeatures:
    """A loader over one split's cached features, computed on first use (the training split's inside epoch 1's
    training clock, as the backbone pass is the probe's training cost). Training: the order every loader of this
    (seed, epoch) follows (loader_contract.epoch_plan), ragged tail dropped; evaluation: every image once, in order."""

    def __init__(self, compute, n: int, options: LoaderOptions):
        self._compute, self.options, self.batch_size, self.epoch = compute, options, options.batch_size, 0
        self._n, self._len, self._cache = n, num_batches(n, options), None

    def __len__(self) -> int:
        return self._len

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        import torch

        if self._cache is None:
            self._cache = self._compute()
        feats, labels = self._cache
        plan = epoch_plan(self._n, self.options, self.epoch)
        order = torch.from_numpy(plan.order).to(feats.device)
        for b in range(plan.num_batches):
            idx = order[plan.batch(b)]
            x = feats[idx]
            yield (x[:, 0] if self.options.train else x), labels[idx]


@dataclass
class Probe:
    head: ProbeHead  # what evaluation calls on cached features
    classifier: object  # the only trained module (what the step calls)


def attach(model, data, cfg, device, autocast):
    """Freeze all but the classifier and give `data` (build.TrainData) loaders over cached features; returns
    (Probe, data). The features come from the tensor loader's evaluation path: the images as the whole network sees
    them at test time (resized, normalised, no crop or flip)."""
    from fastcifar.data.loaders import make_loader

    if data.train_images is None or cfg.loader == "dali-files":
        raise FastCifarError("--linear-probe caches features of the images in memory: use --loader tensor or dali, "
                             "not dali-files")
    classifier = classifier_of(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in classifier.parameters():
        p.requires_grad_(True)
    views = 2 if cfg.tta else 1
    eval_opts = data.test.options  # the evaluation loader's: every image once, in order, no crop or flip

    def cached(images, labels, n_views):
        loader = make_loader(images, np.asarray(labels), eval_opts, kind=cfg.loader, device=device)
        return lambda: extract(model, loader, views=n_views, autocast=autocast)

    train = CachedFeatures(cached(data.train_images, data.train_labels, 1), data.n_train, data.train_options)
    val = None if data.val is None else CachedFeatures(cached(data.val_images, data.val_labels, views), data.n_val,
                                                        eval_opts)
    test_images, test_labels = data.test_arrays
    test = CachedFeatures(cached(test_images, test_labels, views), data.n_test, eval_opts)
    return Probe(head=ProbeHead(classifier), classifier=classifier), replace(data, train=train, val=val, test=test)
