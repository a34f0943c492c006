"""The contract every inference backend implements: `Predictor` (uint8 HWC pixel batches in, logits and
probabilities out; the softmax is robustness/metrics.py's).

Every predictor splits work into `to_input` (host pixels -> backend input on its device), `run` (may be
asynchronous; output stays on the device) and `to_numpy`, so `fastcifar bench` can time the device-resident
path and the host-to-device path separately. The runners (`torch_runner.py`, `ort_runner.py`, `trt_runner.py`)
subclass it; `predictor.py` chooses and loads one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fastcifar.errors import FastCifarError
from fastcifar.robustness.metrics import softmax
from fastcifar.preprocess import NATIVE_SIZE


class Predictor:
    """uint8 (N, input_size, input_size, 3) RGB in; float32 logits / probabilities (N, num_classes) out."""

    backend: str = ""
    device: str = "cpu"
    timing: str = "wall"  # how bench times `run`: "events" (CUDA events on torch's stream) or "wall"
    max_batch: int = 256  # larger inputs are split: bounded memory whatever the caller passes
    precision: str = "fp32"  # what the model computes in (an exported file's: its metadata says)
    note: str | None = None  # how this backend runs differently from what was asked, and the fix

    def __init__(self, spec: dict, artifact: Path):
        self.spec = spec
        self.artifact = Path(artifact)
        self.class_names: tuple[str, ...] = tuple(spec["class_names"])
        self.input_size: int = int(spec.get("input_size") or NATIVE_SIZE)
        self.image_size: int = int(spec.get("image_size") or self.input_size)

    # -- backend hooks
    def to_input(self, pixels: np.ndarray) -> Any:
        raise NotImplementedError

    def run(self, inputs: Any) -> Any:
        raise NotImplementedError

    def to_numpy(self, outputs: Any) -> np.ndarray:
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the CPU and for synchronous runtimes)."""

    # -- public
    def check_pixels(self, pixels) -> np.ndarray:
        pixels = np.asarray(pixels)
        want = (self.input_size, self.input_size, 3)
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != want:
            hint = " (one image? add a batch axis: pixels[None])" if pixels.shape == want else ""
            raise FastCifarError(f"{self.backend} predictor takes uint8 pixels of shape (N, {want[0]}, {want[1]}, 3); "
                                 f"got {pixels.dtype} {pixels.shape}{hint}")
        return np.ascontiguousarray(pixels)

    def logits(self, pixels) -> np.ndarray:
        pixels = self.check_pixels(pixels)
        if len(pixels) == 0:
            return np.zeros((0, len(self.class_names)), np.float32)
        chunks = [self.to_numpy(self.run(self.to_input(pixels[i:i + self.max_batch])))
                  for i in range(0, len(pixels), self.max_batch)]
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def predict(self, pixels) -> np.ndarray:
        return softmax(self.logits(pixels)).astype(np.float32)

    def describe(self) -> dict:
        return {"backend": self.backend, "device": self.device, "artifact": str(self.artifact),
                "input_size": self.input_size, "image_size": self.image_size, "precision": self.precision,
                "note": self.note}
