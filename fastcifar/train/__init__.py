"""Training wing. Entry points: `fastcifar.train.train` and `fastcifar.train.resume` (loop.py, which reads setup ->
epochs -> finish); the stages' parts live beside it (build, step, levers, tta, guards, records, checkpoint,
summary, distributed, progress)."""

from fastcifar.rundir import is_finished
from fastcifar.train.loop import TrainResult, resume, train

__all__ = ["TrainResult", "is_finished", "resume", "train"]
