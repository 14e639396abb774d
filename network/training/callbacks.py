"""Trainer callbacks: the hook protocol, and early stopping with patience and best-weight restoring."""
from __future__ import annotations

import math
from typing import Any

from mpiprop.network.checks import non_negative_float


class Callback:
    """Hooks the Trainer calls on every rank; override the ones you need.

    A callback that decides something (stop, change a rate) must decide the same on every
    rank; the epoch records it sees are already combined over ranks, so deciding from them is.
    Call `trainer.request_stop(why)` to stop after the current batch or epoch and say why in
    the run's last line (setting `trainer.stop_training = True` stops without saying why).
    `state_dict`/`load_state_dict` carry the callback's state through checkpoints.
    """

    def on_fit_start(self, trainer: Any) -> None:
        """Before the first batch (also when resuming)."""

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        """Before the first batch of `epoch` (0-based)."""

    def on_batch_end(self, trainer: Any, step: int, loss: float) -> None:
        """After optimizer step number `step` (1-based, counted over the whole run); `loss` is this rank's batch loss."""

    def on_epoch_end(self, trainer: Any, epoch: int, record: dict[str, float]) -> None:
        """After validation of `epoch`; `record` holds its metrics (loss, val_loss, ...)."""

    def on_fit_end(self, trainer: Any) -> None:
        """After the last epoch, or after training stopped."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep for a resumed run to behave identically."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`."""


class EarlyStopping(Callback):
    """Stop when a monitored metric has not improved for `patience` epochs.

    Args:
        monitor: key of the epoch record to watch ("val_loss" by default).
        patience: epochs without improvement before stopping.
        min_delta: smallest change that counts as an improvement.
        mode: "min" (losses) or "max" (accuracies).
        restore_best_weights: at the end of `fit`, load the weights of the best epoch.

    Checkpoints written during the run keep the last weights (so a resumed run goes on from
    where it was); only the model in memory gets the best weights at the end. Stopping early
    ends the run for good: resuming it trains only when asked for more epochs than before, and
    then counts `patience` afresh from the best value so far.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0, mode: str = "min",
                 restore_best_weights: bool = True):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping patience must be a non-negative integer, got {patience!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.patience, self.mode = monitor, patience, mode
        self.min_delta = non_negative_float(min_delta, "EarlyStopping min_delta")
        self.restore_best_weights = bool(restore_best_weights)
        self.reset()

    def reset(self) -> None:
        """Forget the best value and the epochs waited."""
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch: int | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.best_weights: dict[str, Any] | None = None

    def on_fit_start(self, trainer: Any) -> None:
        if not trainer.history:  # a fresh run, not a resumed one
            self.reset()
        elif self.stopped_epoch is not None:  # a run that stopped early, resumed for more epochs
            self.wait, self.stopped_epoch = 0, None

    def improved(self, value: float) -> bool:
        """True when `value` beats the best so far by more than `min_delta`."""
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, trainer: Any, epoch: int, record: dict[str, float]) -> None:
        if self.monitor not in record:
            raise KeyError(f"EarlyStopping monitors {self.monitor!r} but the epoch record has {sorted(record)}; "
                           "pass val_loader to fit, or choose another monitor")
        value = record[self.monitor]
        if self.improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = trainer.model.state_dict()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            trainer.request_stop(self.describe_stop(), final=True)

    def describe_stop(self) -> str:
        """Why it stopped, for the run's last line.

        Returns:
            e.g. "early stopping at epoch 17: val_loss did not improve for 10 epochs; best epoch 7
            (val_loss 0.0912) restored".
        """
        stopped = (f"early stopping at epoch {self.stopped_epoch + 1}: {self.monitor} did not improve for "
                   f"{self.patience} epochs")
        if self.best_epoch is None:
            return f"{stopped}; no epoch had a finite {self.monitor}"
        restored = " restored" if self.restore_best_weights else ""
        return f"{stopped}; best epoch {self.best_epoch + 1} ({self.monitor} {self.best:.4g}){restored}"

    def on_fit_end(self, trainer: Any) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            trainer.model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch, "best_weights": self.best_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.wait = float(state["best"]), state["best_epoch"], state["wait"]
        self.stopped_epoch, self.best_weights = state["stopped_epoch"], state["best_weights"]
