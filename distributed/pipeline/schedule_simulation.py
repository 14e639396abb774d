"""Run a schedule on paper: check its steps, find deadlocks, and time it with ideal step costs."""
from __future__ import annotations

from dataclasses import dataclass

from mpiprop.distributed.pipeline.pipeline_schedules import (BACKWARD, BACKWARD_INPUT, BACKWARD_WEIGHT, FORWARD, Schedule, Step,
                                   format_steps)

UNIT_COSTS = {FORWARD: 1.0, BACKWARD: 2.0, BACKWARD_INPUT: 1.0, BACKWARD_WEIGHT: 1.0}


class ScheduleDeadlock(RuntimeError):
    """A schedule in which some rank waits forever for a step that can never run."""


@dataclass
class SimulatedRun:
    """Start and finish time of every step of every rank, with ideal costs and free messages."""

    starts: list[list[float]]
    finishes: list[list[float]]

    @property
    def makespan(self) -> float:
        return max((times[-1] for times in self.finishes if times), default=0.0)

    def busy(self, rank: int) -> float:
        """Seconds (cost units) rank `rank` spends computing."""
        return sum(f - s for s, f in zip(self.starts[rank], self.finishes[rank]))

    def bubble_fractions(self) -> list[float]:
        """Per rank, the idle share of the whole run: 1 - busy / makespan."""
        total = self.makespan
        return [1.0 - self.busy(rank) / total if total else 0.0 for rank in range(len(self.starts))]


def check_schedule(schedule: Schedule, micro_batches: int, virtual_stages: int = 1, training: bool = True) -> None:
    """Raise ValueError unless every rank forwards each (micro-batch, chunk) once and backs it up once.

    Backing up is one "backward", or one "backward_input" followed later by one "backward_weight",
    and always after the forward. A schedule for evaluation (`training=False`) has forwards only.
    """
    complete = [{FORWARD}] if not training else [{FORWARD, BACKWARD}, {FORWARD, BACKWARD_INPUT, BACKWARD_WEIGHT}]
    for rank, steps in enumerate(schedule):
        expected = {(i, c) for i in range(micro_batches) for c in range(virtual_stages)}
        seen: dict[tuple[str, int, int], int] = {}
        for position, step in enumerate(steps):
            key = (step.kind, step.micro_batch, step.chunk)
            if (step.micro_batch, step.chunk) not in expected or key in seen:
                raise ValueError(f"rank {rank} step {position} ({step}) is out of range or repeated: "
                                 f"{format_steps(steps)}")
            seen[key] = position
            _check_order(rank, step, seen, steps)
        _check_complete(rank, expected, seen, steps, complete)


def _check_order(rank: int, step: Step, seen: dict, steps: list[Step]) -> None:
    needs = {BACKWARD: FORWARD, BACKWARD_INPUT: FORWARD, BACKWARD_WEIGHT: BACKWARD_INPUT}.get(step.kind)
    if needs is not None and (needs, step.micro_batch, step.chunk) not in seen:
        raise ValueError(f"rank {rank}: {step} comes before its {needs} step: {format_steps(steps)}")


def _check_complete(rank: int, expected: set, seen: dict, steps: list[Step], complete: list[set]) -> None:
    for micro_batch, chunk in sorted(expected):
        has = {kind for kind, i, c in seen if (i, c) == (micro_batch, chunk)}
        if has not in complete:
            raise ValueError(f"rank {rank}: micro-batch {micro_batch} chunk {chunk} has steps {sorted(has)}: "
                             f"{format_steps(steps)}")


def simulate(schedule: Schedule, costs: dict[str, float] | None = None) -> SimulatedRun:
    """Execute `schedule` with each step starting as soon as its rank and its input are ready.

    A forward of virtual stage k waits for the forward of k-1 (same micro-batch); a
    backward or input-gradient step of k waits for that of k+1. Messages are free.

    Args:
        schedule: one step list per rank; rank r's chunk c is virtual stage c * ranks + r.
        costs: time per step kind for one chunk; defaults to F=1, B=2, I=1, W=1.

    Returns:
        the simulated timeline.

    Raises:
        ScheduleDeadlock: when some steps can never start; the message lists them.
    """
    costs = {**UNIT_COSTS, **(costs or {})}
    ranks = len(schedule)
    last_stage = max((step.chunk for steps in schedule for step in steps), default=0) * ranks + ranks - 1
    done: dict[tuple[str, int, int], float] = {}
    starts: list[list[float]] = [[] for _ in range(ranks)]
    finishes: list[list[float]] = [[] for _ in range(ranks)]
    progress = True
    while progress:
        progress = False
        for rank, steps in enumerate(schedule):
            while len(finishes[rank]) < len(steps):
                step = steps[len(finishes[rank])]
                stage = step.chunk * ranks + rank
                ready = _input_ready(step, stage, last_stage, done)
                if ready is None:
                    break
                start = max(ready, finishes[rank][-1] if finishes[rank] else 0.0)
                finish = start + costs[step.kind]
                starts[rank].append(start)
                finishes[rank].append(finish)
                done[(_phase(step.kind), step.micro_batch, stage)] = finish
                progress = True
    _raise_if_stuck(schedule, finishes)
    return SimulatedRun(starts, finishes)


def _phase(kind: str) -> str:
    return {BACKWARD_INPUT: BACKWARD}.get(kind, kind)


def _input_ready(step: Step, stage: int, last_stage: int, done: dict) -> float | None:
    """When the step's input from a neighbouring stage is there (0 if it needs none); None if not yet."""
    if step.kind == FORWARD:
        return 0.0 if stage == 0 else done.get((FORWARD, step.micro_batch, stage - 1))
    if step.kind == BACKWARD_WEIGHT or stage == last_stage:
        return 0.0
    return done.get((BACKWARD, step.micro_batch, stage + 1))


def _raise_if_stuck(schedule: Schedule, finishes: list[list[float]]) -> None:
    stuck = [f"rank {rank} waits at {steps[len(finishes[rank])]} (step {len(finishes[rank])})"
             for rank, steps in enumerate(schedule) if len(finishes[rank]) < len(steps)]
    if stuck:
        raise ScheduleDeadlock("schedule deadlocks: " + "; ".join(stuck))
