"""Why a training run ended: the stop request, the line that reports the end, and whether a resumed run trains."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PREFIX = "training ended: "


@dataclass(frozen=True)
class StopRequest:
    """Why training stops before its last epoch.

    A `final` stop (early stopping) completes the run: resuming it trains only when asked for
    more epochs than it was started with. Any other stop (a signal, a callback) interrupts the
    run: resuming goes on where it stopped.
    """

    why: str
    final: bool = False

    def state_dict(self) -> dict[str, Any]:
        """The request as checkpoint metadata."""
        return {"why": self.why, "final": self.final}


def end_line(epoch: int, batch: int, epochs: int, stop: StopRequest | None, checkpoint: Any = None) -> str:
    """The line that ends a run.

    Args:
        epoch: the epoch in progress (0-based), or the number of epochs done when it stopped between epochs.
        batch: batches done in that epoch (0 between epochs).
        epochs: the epochs the run was asked for.
        stop: why it stopped early, or None when it ran all its epochs.
        checkpoint: the checkpoint path, named when an interrupted run can be resumed from it.

    Returns:
        e.g. "training ended: all 40 epochs done".
    """
    if stop is None:
        return f"{PREFIX}all {epochs} epochs done"
    if stop.final:
        return PREFIX + stop.why
    where = f"in epoch {epoch + 1} of {epochs}, after batch {batch}" if batch else f"after epoch {epoch} of {epochs}"
    resume = f"; resume from {checkpoint} to go on" if checkpoint is not None else ""
    return f"{PREFIX}stopped {where}: {stop.why}{resume}"


def non_finite_line(error: Exception) -> str:
    """The line that ends a run stopped by NaN or Inf values: the error's message."""
    return f"{PREFIX}non-finite values: {error}"


def nothing_to_train(saved: dict[str, Any], epochs: int, path: str) -> str | None:
    """When a resumed run had already ended and `epochs` asks for no more: the line that says so, else None.

    Args:
        saved: the trainer state of the checkpoint ("epoch", "epochs", "stop").
        epochs: the epochs the resumed run asks for.
        path: the checkpoint's path, for the message.
    """
    saved_epochs, stop = saved.get("epochs"), saved.get("stop")
    if saved_epochs is None or epochs > saved_epochs:
        return None
    if stop is not None and stop["final"]:
        how = stop["why"]
    elif stop is None and saved["epoch"] >= saved_epochs:
        how = f"all {saved_epochs} epochs done"
    else:
        return None
    return (f"{PREFIX}nothing to train: the run in {path} had already ended ({how}); "
            f"ask for more than {saved_epochs} epochs to train on")
