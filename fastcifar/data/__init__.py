"""Data layer: CIFAR-10 on disk (`cifar`), synthetic test data (`synthetic`) and device loaders (`loaders`)."""
