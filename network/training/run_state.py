"""RunState: where a training run stands (epoch, batch, step, skips, history, stop) and its form in a checkpoint."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from mpiprop.network.training.metrics import MetricSums, MetricTotals
from mpiprop.network.training.run_end import StopRequest


@dataclass
class RunState:
    """The counters and records of one `Trainer.fit`, which a checkpoint keeps so that a resumed run goes on exactly.

    Attributes:
        epochs: the epochs the run was asked for.
        loader_settings: what must match to resume inside an epoch (see `global_loader_settings`).
        epoch: the epoch in progress (0-based).
        batch: batches done in that epoch.
        step: training steps over the whole run, skipped ones included.
        skipped_in_a_row, skipped_this_epoch: steps skipped for NaN or Inf values.
        history: one record per finished epoch.
        stop_training: set to stop after the current batch.
        stop_request: why the run stops early, when it was said.
        train_totals: this rank's metric sums of the epoch in progress.
    """

    epochs: int | None = None
    loader_settings: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    batch: int = 0
    step: int = 0
    skipped_in_a_row: int = 0
    skipped_this_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_training: bool = False
    stop_request: StopRequest | None = None
    train_totals: MetricTotals = field(default_factory=MetricTotals)
    epoch_started: float = field(default_factory=time.perf_counter)

    def next_epoch(self) -> None:
        """Count the epoch in progress as done: the next starts at its first batch with fresh sums."""
        self.epoch, self.batch, self.train_totals, self.skipped_this_epoch = self.epoch + 1, 0, MetricTotals(), 0

    def stop(self) -> StopRequest | None:
        """Why training stopped early, or None when it ran all its epochs."""
        if self.stop_request is None and self.stop_training:
            return StopRequest("a callback set trainer.stop_training")
        return self.stop_request

    def to_meta(self, rank_sums: list[MetricSums], rank_rng: list[Any] | None, callback_types: list[str],
                callback_states: list[dict[str, Any]], grad_scaler: dict[str, Any] | None) -> dict[str, Any]:
        """The checkpoint form: this state plus each rank's metric sums and random state (None for one rank), the
        callbacks' types and states (one copy, whole-model mappings joined) and the loss scaler's state."""
        return {
            "epoch": self.epoch, "batch": self.batch, "step": self.step,
            "rank_rng": rank_rng, "rank_train_sums": rank_sums,
            "skipped": [self.skipped_this_epoch, self.skipped_in_a_row],
            "grad_scaler": grad_scaler, "history": self.history, "epochs": self.epochs,
            "stop": None if self.stop_request is None else self.stop_request.state_dict(),
            "callbacks": [{"type": kind, "state": state} for kind, state in zip(callback_types, callback_states)],
            "loader": self.loader_settings,
        }

    def load_meta(self, meta: dict[str, Any], rank: int, size: int, is_main: bool) -> None:
        """Restore the counters and records of a checkpoint's trainer meta on rank `rank` of `size`."""
        self.epoch, self.batch, self.step = meta["epoch"], meta["batch"], meta["step"]
        self.history = list(meta["history"])
        rank_sums = meta["rank_train_sums"] if "rank_train_sums" in meta else [meta["train_sums"]]
        self.train_totals.load_state_dict(own_train_sums(rank_sums, rank, size, is_main))
        self.skipped_this_epoch, self.skipped_in_a_row = meta.get("skipped", (0, 0))


def own_train_sums(rank_sums: list[MetricSums], rank: int, size: int, is_main: bool) -> MetricSums:
    """This rank's share of the epoch's metric sums: its own in a layout of as many ranks, else the main rank
    holds them all (the combination over ranks, a sum or a mean, then gives the same ratios)."""
    if len(rank_sums) == size:
        return rank_sums[rank]
    if not is_main:
        return MetricTotals().state_dict()
    return {key: sum(float(sums[key]) for sums in rank_sums) for key in rank_sums[0]}
