"""state.pt: everything needed to continue a run exactly after an epoch (optimizer, scheduler, loss scaler, EMA,
RNG), saved atomically and loaded back with `torch.load(weights_only=True)`."""

from __future__ import annotations

from pathlib import Path

from fastcifar.errors import FastCifarError


def save_state(path: Path, epoch: int, train_seconds: float, model, opt, ema, scaler) -> None:
    """Everything needed to continue exactly after `epoch` (loaded back with weights_only=True)."""
    import torch

    from fastcifar.fileio import atomic_path

    optimizer, scheduler = opt
    state = {
        "epoch": epoch, "train_seconds": train_seconds, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None, "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path, model, opt, ema, scaler, device) -> tuple[int, float]:
    import torch

    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign file
        raise FastCifarError(f"cannot resume from {path}: unreadable ({type(exc).__name__})") from None
    optimizer, scheduler = opt
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
