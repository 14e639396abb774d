"""What one pipeline run did on one rank: the time of each step, time spent waiting, stashed micro-batches."""
from __future__ import annotations

from dataclasses import dataclass, field

from mpiprop.distributed.pipeline.pipeline_schedules import Step


@dataclass(frozen=True)
class StepRecord:
    """One executed step: seconds since the run began at its start and end, and seconds it waited for input."""

    step: Step
    start: float
    end: float
    waited: float

    @property
    def busy(self) -> float:
        """Seconds of this step spent computing (not waiting for a message)."""
        return self.end - self.start - self.waited


@dataclass
class StageStats:
    """Timeline of one rank for one batch.

    `total` runs from the moment all ranks agreed on the batch until the loss reached every
    rank, the same span on all ranks, so `bubble` is each rank's idle share of the batch.
    `peak_stash` is the most micro-batches (per chunk) whose activations the rank held at once.
    """

    rank: int
    records: list[StepRecord] = field(default_factory=list)
    total: float = 0.0
    peak_stash: int = 0

    @property
    def busy(self) -> float:
        """Seconds spent computing."""
        return sum(record.busy for record in self.records)

    @property
    def bubble(self) -> float:
        """Idle share of the batch: 1 - busy / total."""
        return 1.0 - self.busy / self.total if self.total > 0 else 0.0

