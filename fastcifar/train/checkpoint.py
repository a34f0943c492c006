"""What state.pt holds: everything needed to continue a run exactly after an epoch (model, optimizer, scheduler,
loss scaler, EMA, RNG). `training_state` gathers it and `restore` puts it back; rundir.RunDir writes and reads the
file (atomically; read back with torch.load(weights_only=True))."""

from __future__ import annotations


def training_state(epoch: int, train_seconds: float, model, optimizer, scheduler, ema, scaler,
                   small_data: str | None = None) -> dict:
    """`small_data`: the note of the batch the run's first start fitted to its data (build.fit_to_data): config.json
    holds the fitted values, so a resumed run cannot say it again, and its summary keeps it from here."""
    import torch

    return {"epoch": epoch, "train_seconds": train_seconds, "small_data": small_data, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "ema": ema.state_dict() if ema is not None else None, "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore(state: dict, model, optimizer, scheduler, ema, scaler) -> tuple[int, float]:
    """Put `state` back; returns (the epoch it was saved after, the training seconds until then)."""
    import torch

    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    if ema is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    torch.set_rng_state(state["torch_rng"].cpu())
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
    return int(state["epoch"]), float(state["train_seconds"])
