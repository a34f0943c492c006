"""Training wing: the loop (`loop.py`: `train`, `resume`), what it is built from (`build.py`, `step.py`,
`checkpoint.py`, `records.py`, `distributed.py`, `progress.py`, `levers.py`) and evaluation
(`evaluate.py`). `fastcifar.train.train` and `fastcifar.train.resume` are the entry points scripts call."""

from fastcifar.rundir import is_finished
from fastcifar.train.loop import TrainResult, resume, train

__all__ = ["TrainResult", "is_finished", "resume", "train"]
