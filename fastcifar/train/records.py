"""What a training run records as it goes, besides its state: the metrics of each epoch, the best-validation
checkpoint, and - with --tensorboard - TensorBoard scalars, hparams and the confusion matrix. Rank 0 only; every
file is written by the run's rundir.RunDir (timm's summary.csv and model_best, Ultralytics' results.csv and
best.pt are the same records)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from fastcifar.config import TrainConfig
from fastcifar.errors import FastCifarError
from fastcifar.rundir import BEST_FILE, PREVIOUS_BEST_FILE, TENSORBOARD_DIR, RunDir, meta_path

TB_SCALARS = {  # metrics.jsonl key -> TensorBoard tag
    "train_loss": "loss/train", "val_loss": "loss/val", "test_loss": "loss/test", "train_acc": "accuracy/train",
    "val_acc": "accuracy/val", "test_acc": "accuracy/test", "lr": "lr", "images_per_second": "images_per_second",
}


class RunRecords:
    """The per-epoch records of one run directory (`epoch`), and what closes them (`finish`)."""

    def __init__(self, cfg: TrainConfig, run: RunDir, spec, extra: dict, start_epoch: int = 0):
        self.cfg, self.run, self.spec, self.extra = cfg, run, spec, extra
        self.committed = start_epoch  # the epoch of the last state.pt: a resume continues from there
        saved = self._restore_best(start_epoch)  # a resumed run continues from the best it had
        self.best = None if saved is None else {"epoch": saved["epoch"], **saved["metrics"]}
        self.best_on_disk = None if saved is None else saved["epoch"]
        self.best_seconds = 0.0
        self.writer = None
        if cfg.tensorboard:
            log_dir = Path(cfg.tensorboard_dir) if cfg.tensorboard_dir else run.path / TENSORBOARD_DIR
            self.writer = run.tensorboard_writer(log_dir)
            print(f"tensorboard: events in {log_dir} (tensorboard --logdir {log_dir})", file=sys.stderr, flush=True)
        self.keeps_best = cfg.save_best and cfg.val_fraction > 0

    def _restore_best(self, start_epoch: int) -> dict | None:
        """The best checkpoint of the timeline the restored state belongs to (epochs 1..start_epoch), its record.

        A best from a later epoch belongs to epochs that are trained again (on a GPU not bit-identically): it goes,
        and the best it replaced, kept aside until that epoch's state was saved (PREVIOUS_BEST_FILE), comes back.
        best.json is rewritten from the record inside the weights where a kill fell between the two writes."""
        run = self.run
        best, previous = run.best_meta(), run.previous_best_meta()
        if best is not None and best["epoch"] <= start_epoch:
            if previous is not None or (run.path / PREVIOUS_BEST_FILE).exists():
                run.drop_previous_best()
            if run.repair_best_json(best):
                print(f"{meta_path(run.path / BEST_FILE)}: rewritten from the record inside {BEST_FILE} (it was "
                      "damaged, or a write was cut between the two)", file=sys.stderr, flush=True)
            return best
        if previous is not None and previous["epoch"] <= start_epoch:
            return run.restore_previous_best()
        if best is None and (run.path / BEST_FILE).is_file():
            # A run from before the record moved into the weights file, whose best.json is damaged: which epoch
            # these weights are is unknown, and they are the user's.
            raise FastCifarError(f"{meta_path(run.path / BEST_FILE)} is damaged and {BEST_FILE} carries no record "
                                 f"of its own: restore it, or move {BEST_FILE} away to continue without it")
        if any((run.path / name).exists() for name in (BEST_FILE, PREVIOUS_BEST_FILE, meta_path(
                run.path / BEST_FILE).name)):
            run.drop_best()
        return None

    def state_saved(self, epoch: int) -> None:
        """state.pt now holds `epoch`: the best kept aside for a resume before it is no longer needed."""
        self.committed = epoch
        if (self.run.path / PREVIOUS_BEST_FILE).exists():
            self.run.drop_previous_best()

    def header(self) -> str | None:
        """The one line a run without a validation split says about the best checkpoint."""
        if self.cfg.save_best and self.cfg.val_fraction == 0:
            return "no validation split (--val-fraction 0): no best checkpoint is kept, only the final model"
        return None

    def epoch(self, metrics: dict, history: list[dict], eval_model) -> None:
        """metrics.jsonl (appended) and results.csv (rewritten) at once; the best checkpoint when validation
        accuracy improved; TensorBoard scalars."""
        self.run.append_metrics(metrics, history)
        val = metrics.get("val_acc")
        if self.keeps_best and val is not None and (self.best is None or val > self.best["val_acc"]):
            start = time.perf_counter()
            self.best = {"epoch": metrics["epoch"], "val_acc": val, "test_acc": metrics.get("test_acc"),
                         "val_loss": metrics.get("val_loss"), "test_loss": metrics.get("test_loss")}
            from fastcifar.models import weights_and_meta

            if self.best_on_disk is not None and self.best_on_disk <= self.committed:
                self.run.keep_previous_best()  # the saved state's best, until this epoch's state is saved too
            self.run.save_weights(*weights_and_meta(
                eval_model, self.spec, metrics={k: v for k, v in self.best.items() if k != "epoch"},
                extra={**self.extra, "checkpoint": "best", "epoch": metrics["epoch"]}), checkpoint="best")
            self.best_on_disk = metrics["epoch"]
            self.best_seconds += time.perf_counter() - start
        if self.writer is not None:
            for key, tag in TB_SCALARS.items():
                if metrics.get(key) is not None:
                    self.writer.add_scalar(tag, metrics[key], metrics["epoch"])
            self.writer.flush()

    def best_summary(self, final_test_acc: float | None) -> dict:
        """summary.json's `best`: which epoch, its validation and test accuracy, and the final model's beside it."""
        if self.best is None:
            reason = ("no validation split (--val-fraction 0)" if self.cfg.val_fraction == 0 else
                      "--no-save-best" if not self.cfg.save_best else "no epoch was evaluated on the validation split")
            return {"file": None, "reason": reason, "final_test_acc": final_test_acc}
        return {"file": BEST_FILE, **self.best, "final_test_acc": final_test_acc, "save_seconds": self.best_seconds}

    def close(self) -> None:
        """Stop TensorBoard's writer thread and close its file (also when a run fails)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def finish(self, summary: dict, confusion) -> None:
        """TensorBoard's hparams (the config with the final metrics) and the confusion matrix; closes the writer."""
        if self.writer is None:
            return
        hparams = {k: v for k, v in self.cfg.to_dict().items() if isinstance(v, (int, float, str, bool))}
        final = {f"final/{k}": summary[k] for k in ("test_acc", "val_acc", "test_loss") if summary.get(k) is not None}
        self.writer.add_hparams(hparams, final, run_name=".")
        self.writer.add_figure("confusion_matrix", _confusion_figure(confusion, summary["class_names"]),
                               summary["epochs"])
        self.writer.close()


def _confusion_figure(confusion, class_names):
    import numpy as np
    from matplotlib.figure import Figure

    counts = np.asarray(confusion, dtype=float)
    rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(6, 5.5), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(100 * rows, cmap="Blues", vmin=0, vmax=100)
    ax.set(xticks=range(len(class_names)), yticks=range(len(class_names)), xlabel="predicted", ylabel="true",
           title="confusion matrix, test split (% of the true class)")
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticklabels(class_names)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig
