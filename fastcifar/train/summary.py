"""A finished run's summary: the confusion matrix, every figure the report and the sweep read (summary.json), the
model saved for serving with what model.json records about its data (`dataset_extra`), the DDP consistency record.

Owns `run_summary(session)` (train/loop.py's `finish` calls it after the final evaluation); everything it writes
goes through the run's rundir.RunDir. `"status": "finished"` in summary.json is what makes a run finished.
"""

from __future__ import annotations

from pathlib import Path


def run_summary(s) -> dict:
    """summary.json's content (written, with model.safetensors + model.json, on rank 0; {} on the other ranks)."""
    import numpy as np

    from fastcifar.models import weights_and_meta
    from fastcifar.train.build import data_stream
    from fastcifar.train.distributed import distributed_record
    from fastcifar.train.guards import run_facts, run_warnings
    from fastcifar.train.step import warmup_steps

    cfg, dist, data = s.cfg, s.dist, s.data
    distributed = distributed_record(s.model, data, dist) if dist.enabled else None
    if not dist.is_main:
        return {}
    metrics, results = s.final_eval
    test = results["test"]
    n = s.spec.num_classes
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (test.labels, test.predictions), 1)
    # Throughput excludes the first epoch when there are more: it carries compile and cudnn warm-up.
    steady = [h["images_per_second"] for h in s.history[1:]] or [h["images_per_second"] for h in s.history]
    summary = {
        "status": "finished", "epochs": cfg.epochs, **metrics,
        "train_seconds": s.train_seconds, "images_per_second": float(np.median(steady)),
        "time_to_90pct_final_test_acc": _time_to_fraction(s.history, metrics["test_acc"], 0.9),
        "per_class_test_acc": [float(confusion[c, c] / max(confusion[c].sum(), 1)) for c in range(n)],
        "confusion": confusion.tolist(), "class_names": list(s.spec.class_names),
        "n_train": data.n_train, "n_val": data.n_val, "n_test": data.n_test,
        "dataset": data.info.get("dataset", "cifar10"), "dataset_skipped": data.info.get("skipped_summary"),
        "arch": cfg.arch, "init": s.spec.init, "stem": cfg.stem, "image_size": cfg.image_size, "seed": cfg.seed,
        "precision": cfg.precision, "channels_last": cfg.channels_last, "compile": cfg.compile,
        "compile_mode": cfg.compile_mode,
        "compile_record": s.compile_record.finish() if s.compile_record is not None else None,
        "device": str(s.device), "loader": data.kind, "world_size": dist.world_size, "distributed": distributed,
        "compile_warmup_seconds": s.warmup_seconds, "state_save_seconds": s.state_seconds, "levers": s.levers,
        "augmentation": cfg.augmentation(), "small_data": s.fitted, "batch_size": cfg.batch_size, "lr": cfg.lr,
        "warmup_steps": warmup_steps(cfg, len(data.train)),
        "best": s.records.best_summary(metrics["test_acc"]),
        "cudnn_benchmark": _cudnn_benchmark(s.device),
        "warnings": run_warnings(s.history, run_facts(s)),  # what the log printed, every epoch's (guards.py)
        "linear_probe": cfg.linear_probe, "label_noise": cfg.label_noise, "noisy_labels": data.noisy,
        "data_stream": data_stream(data, cfg.epochs, augmented=s.probe is None),
    }
    s.run.save_weights(*weights_and_meta(s.eval_model(), s.spec, metrics=metrics,
                                         extra=dataset_extra(data, s.run.path, cfg)))
    s.run.write_summary(summary)
    s.records.finish(summary, confusion)
    return summary


def dataset_extra(data, run_dir: Path, cfg) -> dict:
    """What model.json records about the data: where it is, which dataset (fastcifar/data/datasets.model_split reads
    the same test split later), the run's name and augmentation, and an image folder's test images by name."""
    info = data.info
    extra = {"data_dir": str(data.root), "run_name": run_dir.name, "augmentation": cfg.augmentation(),
             "dataset": info.get("dataset", "cifar10"),
             "dataset_info": {k: v for k, v in info.items() if k != "class_names"}}
    if data.test_files is not None:  # a changed folder cannot move the run's test images
        extra["dataset_info"]["test_files"] = data.test_files
    return extra


def _cudnn_benchmark(device) -> bool | None:
    import torch

    return bool(torch.backends.cudnn.benchmark) if device.type == "cuda" else None


def _time_to_fraction(history: list[dict], final: float | None, fraction: float) -> float | None:
    """Training seconds until test accuracy first reached `fraction` of its final value; None when only the last
    epoch did (that figure would just repeat the training time: no earlier epoch got there)."""
    if final is None:
        return None
    for h in history[:-1]:
        if h.get("test_acc") is not None and h["test_acc"] >= fraction * final:
            return h["elapsed_train_seconds"]
    return None
