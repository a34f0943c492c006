"""What a study does to one of its runs, wherever that runs (in this process: compare.LocalRuns; in a Ray task:
ray_runs): `train_or_resume` trains it, or continues it from its saved state, and `ensure_robustness` evaluates its
final model - calibration and accuracy under every corruption at the chosen severities (fastcifar.robustness; fp32,
no TTA) - once, cached in its run directory (robustness.json) so a rerun reuses it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from fastcifar.config import ROBUSTNESS_SEVERITIES, TrainConfig
from fastcifar.rundir import RunDir


def train_or_resume(cfg: TrainConfig, state: str, hook=None):
    """The run `cfg` describes (its directory is `cfg.out`), by its run_state: "interrupted" continues from state.pt,
    "new" trains it (over setup-only leftovers: nothing trained there, nothing to keep). -> train.TrainResult"""
    from fastcifar.train.loop import resume, train

    run_dir = Path(cfg.out)
    if state == "interrupted":
        return resume(run_dir, progress=False, on_epoch_end=hook)
    if run_dir.exists():
        RunDir(run_dir).remove()
    return train(cfg, progress=False, on_epoch_end=hook)


def ensure_robustness(run_dir: Path, test, device: str, log: Callable[[str], None],
                      severities: tuple[int, ...] = ROBUSTNESS_SEVERITIES) -> dict:
    """The final model in `run_dir` on the test split (robustness.json's content, computed once)."""
    cached = RunDir(run_dir).read_robustness()
    if cached is not None:
        return cached
    import numpy as np
    import torch

    from fastcifar.models import load_model
    from fastcifar.preprocess import make_pixel_pipeline
    from fastcifar.robustness import corruption_names, evaluate_logits
    from fastcifar.runtime import resolve_device

    resolved = resolve_device(device)
    model, spec, _ = load_model(run_dir, device=resolved)
    # The pipeline `fastcifar evaluate --backend torch --precision fp32` runs (uint8 pixels in, the training
    # loader's preprocessing inside), in batches of 256 as predictors do: one evaluation path, fp32 on any device.
    pipeline = make_pixel_pipeline(model, spec.mean, spec.std, spec.image_size).to(resolved)

    def logits(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return np.concatenate([pipeline(torch.from_numpy(pixels[i:i + 256]).to(resolved)).cpu().numpy()
                                   for i in range(0, len(pixels), 256)])

    log(f"evaluating {Path(run_dir).name}: calibration and {len(corruption_names())} corruptions at severities "
        f"{', '.join(map(str, severities))}" if severities else
        f"evaluating {Path(run_dir).name}: calibration on the clean test images")
    start, cpu = time.perf_counter(), time.process_time()
    result = evaluate_logits(logits, test.images, test.labels, corruptions=corruption_names(),
                             severities=severities, device=str(resolved))
    # what compare's time budget priced, by wall and by this process's CPU time (study/sizing.py reads them back)
    result.update(seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu)
    RunDir(run_dir).write_robustness(result)
    return result
