"""Pipeline schedules: pure functions returning each stage's ordered list of steps (no MPI here).

A schedule is a list with one entry per pipeline rank; entry `r` is the ordered list of
`Step`s that rank `r` executes for one training step. The sends and receives each step
implies (activations to the next stage after a forward, gradients to the previous stage
after a backward) are left to the executor.

Written compactly, a step is "F3" (forward of micro-batch 3), "B3" (full backward),
"I3" (input-gradient half of backward), "W3" (weight-gradient half); interleaved steps
name their model chunk too: "F3.1".
"""
from __future__ import annotations

from dataclasses import dataclass
from mpiprop.network.checks import positive_int

FORWARD = "forward"
BACKWARD = "backward"
BACKWARD_INPUT = "backward_input"
BACKWARD_WEIGHT = "backward_weight"
KINDS = (FORWARD, BACKWARD, BACKWARD_INPUT, BACKWARD_WEIGHT)
_LETTERS = {FORWARD: "F", BACKWARD: "B", BACKWARD_INPUT: "I", BACKWARD_WEIGHT: "W"}

Schedule = list[list["Step"]]


@dataclass(frozen=True)
class Step:
    """One unit of work on one rank: `kind` of micro-batch `micro_batch` on model chunk `chunk`.

    `chunk` is the rank's local chunk index (0 unless the schedule is interleaved); rank `r`'s
    chunk `c` is virtual stage `c * stages + r` of the model.
    """

    kind: str
    micro_batch: int
    chunk: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"step kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def is_forward(self) -> bool:
        return self.kind == FORWARD

    @property
    def releases_stash(self) -> bool:
        """Whether this is the last step that needs the micro-batch's stashed activations."""
        return self.kind in (BACKWARD, BACKWARD_WEIGHT)

    def __str__(self) -> str:
        text = f"{_LETTERS[self.kind]}{self.micro_batch}"
        return text if self.chunk == 0 else f"{text}.{self.chunk}"


def format_steps(steps: list[Step]) -> str:
    """The compact form of a rank's steps, e.g. "F0 F1 B0 F2 B1 B2"."""
    return " ".join(str(step) for step in steps)


def gpipe(stages: int, micro_batches: int) -> Schedule:
    """GPipe (Huang et al., 2019): every forward, then every backward, in micro-batch order.

    Each stage stashes all `micro_batches` activations at its peak.
    """
    stages, micro_batches = _check_sizes(stages, micro_batches)
    forwards = [Step(FORWARD, i) for i in range(micro_batches)]
    backwards = [Step(BACKWARD, i) for i in range(micro_batches)]
    return [forwards + backwards for _ in range(stages)]


def one_f_one_b(stages: int, micro_batches: int) -> Schedule:
    """1F1B with a flush (PipeDream-Flush, Narayanan et al., 2021).

    Stage `s` runs `stages - s - 1` warm-up forwards, then alternates one forward and one
    backward, then drains the remaining backwards. At most `stages - s` micro-batches are
    in flight on stage `s`; any number of micro-batches works (fewer than `stages` just
    leaves more of the pipeline idle).
    """
    stages, micro_batches = _check_sizes(stages, micro_batches)
    return [_one_f_one_b_stage(stage, stages, micro_batches) for stage in range(stages)]


def _one_f_one_b_stage(stage: int, stages: int, micro_batches: int) -> list[Step]:
    warmup = min(stages - stage - 1, micro_batches)
    steps = [Step(FORWARD, i) for i in range(warmup)]
    for i in range(micro_batches - warmup):
        steps += [Step(FORWARD, warmup + i), Step(BACKWARD, i)]
    steps += [Step(BACKWARD, i) for i in range(micro_batches - warmup, micro_batches)]
    return steps


def zero_bubble_h1(stages: int, micro_batches: int) -> Schedule:
    """ZB-H1 (Qi et al., 2024): 1F1B with backward split into input- and weight-gradient steps.

    The input-gradient steps ("I") keep 1F1B's order, so gradients travel back without
    waiting for weight gradients; stage `s` defers its weight-gradient steps ("W") by `s`
    micro-batches so they fill the idle time at the end of the pipeline. Every stage holds
    at most `stages` micro-batches, 1F1B's peak, and the bubble shrinks from
    (p-1)(F+B+W) to (p-1)(F+B-W) for step times F, B (input) and W (weight).
    """
    stages, micro_batches = _check_sizes(stages, micro_batches)
    return [_zero_bubble_stage(stage, stages, micro_batches) for stage in range(stages)]


def _zero_bubble_stage(stage: int, stages: int, micro_batches: int) -> list[Step]:
    warmup = min(stages - stage - 1, micro_batches)
    steps = [Step(FORWARD, i) for i in range(warmup)]
    next_weight = 0
    for i in range(micro_batches - warmup):
        steps += [Step(FORWARD, warmup + i), Step(BACKWARD_INPUT, i)]
        if i >= stage:
            steps.append(Step(BACKWARD_WEIGHT, next_weight))
            next_weight += 1
    for i in range(micro_batches - warmup, micro_batches):
        steps += [Step(BACKWARD_INPUT, i), Step(BACKWARD_WEIGHT, next_weight)]
        next_weight += 1
    steps += [Step(BACKWARD_WEIGHT, i) for i in range(next_weight, micro_batches)]
    return steps


def interleaved_one_f_one_b(stages: int, micro_batches: int, virtual_stages: int = 2) -> Schedule:
    """Interleaved 1F1B (Narayanan et al., 2021, Megatron-LM) with `virtual_stages` chunks per rank.

    The model is cut into `stages * virtual_stages` chunks; rank `r` holds chunks
    `r, r + stages, r + 2 * stages, ...` (its local chunks 0, 1, ...). Micro-batches go
    through the chunks in groups of `stages`, which divides the bubble by `virtual_stages`
    at the price of more messages. With one chunk per rank it is plain 1F1B.

    Raises:
        ValueError: when `micro_batches` is not a multiple of `stages` (the schedule's
            grouping needs whole groups).
    """
    stages, micro_batches = _check_sizes(stages, micro_batches)
    virtual_stages = positive_int(virtual_stages, "virtual_stages")
    if virtual_stages == 1:
        return one_f_one_b(stages, micro_batches)
    if micro_batches % stages:
        suggestion = -(-micro_batches // stages) * stages
        raise ValueError(
            f"interleaved 1F1B needs micro_batches to be a multiple of the {stages} stages, got "
            f"{micro_batches}; use micro_batches={suggestion}"
        )
    return [_interleaved_stage(rank, stages, micro_batches, virtual_stages) for rank in range(stages)]


def _interleaved_stage(rank: int, stages: int, micro_batches: int, virtual_stages: int) -> list[Step]:
    total = micro_batches * virtual_stages
    warmup = min((stages - rank - 1) * 2 + (virtual_stages - 1) * stages, total)
    group = stages * virtual_stages

    def step(kind: str, k: int) -> Step:
        chunk = (k % group) // stages
        if kind != FORWARD:
            chunk = virtual_stages - 1 - chunk
        return Step(kind, (k // group) * stages + k % stages, chunk)

    steps = [step(FORWARD, k) for k in range(warmup)]
    for k in range(total - warmup):
        steps += [step(FORWARD, warmup + k), step(BACKWARD, k)]
    steps += [step(BACKWARD, k) for k in range(total - warmup, total)]
    return steps


def forward_only(stages: int, micro_batches: int, virtual_stages: int = 1) -> Schedule:
    """Evaluation and prediction: each rank runs every forward, chunk after chunk per micro-batch group.

    Args:
        stages: pipeline ranks.
        micro_batches: micro-batches per batch.
        virtual_stages: model chunks per rank (as in the training schedule).
    """
    stages, micro_batches = _check_sizes(stages, micro_batches)
    virtual_stages = positive_int(virtual_stages, "virtual_stages")
    steps = [Step(FORWARD, i, chunk) for chunk in range(virtual_stages) for i in range(micro_batches)]
    return [list(steps) for _ in range(stages)]


def peak_in_flight(steps: list[Step]) -> int:
    """The most micro-batches (per chunk) whose activations a rank holds at once.

    A micro-batch is stashed from its forward until the step that releases it: its full
    backward, or its weight-gradient step.
    """
    held = peak = 0
    for step in steps:
        if step.is_forward:
            held += 1
            peak = max(peak, held)
        elif step.releases_stash:
            held -= 1
    return peak


def _check_sizes(stages: int, micro_batches: int) -> tuple[int, int]:
    return positive_int(stages, "stages"), positive_int(micro_batches, "micro_batches")
