"""The pipeline schedules by name: for each, its step-list builder, default virtual stages and bubble formula."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from mpiprop.distributed.pipeline.pipeline_schedules import (Schedule, gpipe, interleaved_one_f_one_b, one_f_one_b,
                                                             zero_bubble_h1)
from mpiprop.network.checks import positive_int


@dataclass(frozen=True)
class ScheduleSpec:
    """Everything about one pipeline schedule that the executor, the simulation and the benchmarks read.

    Attributes:
        name: the name users pass, e.g. Pipeline(..., schedule="1f1b").
        builder: pure function (stages, micro_batches, virtual_stages) -> one step list per rank.
        default_virtual_stages: model chunks per rank when the user gives none.
        bubble_formula: (stages, micro_batches, virtual_stages) -> the idle share of a stage in the
            textbook analysis (uniform stages, free messages).
        several_chunks: whether the schedule accepts more than one chunk per rank.
    """

    name: str
    builder: Callable[[int, int, int], Schedule]
    default_virtual_stages: int
    bubble_formula: Callable[[int, int, int], float]
    several_chunks: bool = False

    def build(self, stages: int, micro_batches: int, virtual_stages: int | None = None) -> Schedule:
        """The step lists for these sizes (default virtual stages when None).

        Raises:
            ValueError: for sizes below 1, several chunks per rank for a one-chunk schedule, or
                sizes the schedule cannot use (the message says which).
        """
        virtual_stages = self.virtual_stages(virtual_stages)
        if virtual_stages != 1 and not self.several_chunks:
            raise ValueError(f"schedule {self.name!r} runs one chunk per rank, got virtual_stages={virtual_stages}; "
                             f"use one of {[spec.name for spec in SCHEDULES.values() if spec.several_chunks]} "
                             "for several chunks per rank")
        return self.builder(stages, micro_batches, virtual_stages)

    def bubble(self, stages: int, micro_batches: int, virtual_stages: int | None = None) -> float:
        """The textbook idle share of a stage for these sizes (default virtual stages when None)."""
        return self.bubble_formula(positive_int(stages, "stages"), positive_int(micro_batches, "micro_batches"),
                                   self.virtual_stages(virtual_stages))

    def virtual_stages(self, requested: int | None) -> int:
        """`requested`, or the default when None."""
        return positive_int(self.default_virtual_stages if requested is None else requested, "virtual_stages")


def _one_chunk(builder: Callable[[int, int], Schedule]) -> Callable[[int, int, int], Schedule]:
    return lambda stages, micro_batches, _virtual_stages: builder(stages, micro_batches)


SCHEDULES: dict[str, ScheduleSpec] = {spec.name: spec for spec in (
    ScheduleSpec("gpipe", _one_chunk(gpipe), 1, lambda p, m, v: (p - 1) / (m + p - 1)),
    ScheduleSpec("1f1b", _one_chunk(one_f_one_b), 1, lambda p, m, v: (p - 1) / (m + p - 1)),
    ScheduleSpec("interleaved", interleaved_one_f_one_b, 2, lambda p, m, v: (p - 1) / (v * m + p - 1),
                 several_chunks=True),
    # equal forward, input-gradient and weight-gradient times
    ScheduleSpec("zb-h1", _one_chunk(zero_bubble_h1), 1, lambda p, m, v: (p - 1) / (3 * m + p - 1)),
)}


def schedule_names() -> list[str]:
    """The registered schedule names, in registration order."""
    return list(SCHEDULES)


def schedule_spec(name: str) -> ScheduleSpec:
    """The spec registered under `name`.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown pipeline schedule {name!r}; choose one of {schedule_names()}")
    return SCHEDULES[name]
