"""A performance model: step time and efficiency of data x pipeline layouts from measured compute and link costs."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy

from mpiprop.distributed.pipeline import schedule_spec


@dataclass(frozen=True)
class LinkCost:
    """The alpha-beta cost of a message: `latency_s + nbytes / bandwidth_bytes_per_s`."""

    latency_s: float
    bandwidth_bytes_per_s: float

    def __post_init__(self) -> None:
        if self.latency_s < 0 or self.bandwidth_bytes_per_s <= 0:
            raise ValueError(f"a link needs latency >= 0 and bandwidth > 0, got latency={self.latency_s} s, "
                             f"bandwidth={self.bandwidth_bytes_per_s} B/s")

    def seconds(self, nbytes: float) -> float:
        """Time to move one message of `nbytes`."""
        return self.latency_s + nbytes / self.bandwidth_bytes_per_s


@dataclass(frozen=True)
class Measurements:
    """What the model is built from, all measured on a real machine.

    Attributes:
        compute_s_per_sample: forward plus backward time of the whole model for one sample on one rank.
        allreduce: per-step latency and per-link bandwidth of the ring allreduce (see `ring_allreduce_seconds`).
        p2p: latency and bandwidth of one point-to-point message.
        exposed_allreduce: the fraction of the allreduce that does not overlap the backward pass
            (1: none of it is hidden, an upper bound on the step time).
    """

    compute_s_per_sample: float
    allreduce: LinkCost
    p2p: LinkCost
    exposed_allreduce: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.exposed_allreduce <= 1:
            raise ValueError(f"exposed_allreduce is a fraction of the allreduce time, between 0 and 1; "
                             f"got {self.exposed_allreduce}")

    def to_dict(self) -> dict:
        """A JSON-ready dict (inverse of `from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Measurements:
        """Rebuild from `to_dict` output."""
        return cls(float(values["compute_s_per_sample"]), LinkCost(**values["allreduce"]), LinkCost(**values["p2p"]),
                   float(values.get("exposed_allreduce", 1.0)))


@dataclass(frozen=True)
class Workload:
    """One training step's size.

    Attributes:
        global_batch: samples per optimizer step, over all data-parallel ranks.
        parameter_bytes: bytes of the gradients allreduced each step (the whole model).
        activation_bytes_per_sample: bytes sent across one pipeline-stage boundary per sample (forward; the
            gradient sent back is the same size).
    """

    global_batch: int
    parameter_bytes: int
    activation_bytes_per_sample: int = 0


@dataclass(frozen=True)
class Layout:
    """How ranks are arranged: `data` data-parallel groups of `stages` pipeline stages, `micro_batches` each."""

    data: int
    stages: int = 1
    micro_batches: int = 1

    def __post_init__(self) -> None:
        for name in ("data", "stages", "micro_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Layout {name} must be a positive integer, got {value!r}")

    @property
    def ranks(self) -> int:
        """Total ranks: data groups times stages."""
        return self.data * self.stages


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one layout (seconds per optimizer step unless noted; `allreduce_s`: its exposed part)."""

    layout: Layout
    step_s: float
    compute_s: float
    bubble_s: float
    p2p_s: float
    allreduce_s: float
    samples_per_s: float
    efficiency: float


def ring_allreduce_seconds(nbytes: float, ranks: int, link: LinkCost) -> float:
    """Ring allreduce of `nbytes` over `ranks`: 2(p-1)/p * nbytes/bandwidth + 2(p-1) * latency (0 for one rank)."""
    if ranks == 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * nbytes / link.bandwidth_bytes_per_s + 2 * (ranks - 1) * link.latency_s


def pipeline_bubble_fraction(stages: int, micro_batches: int, schedule: str = "1f1b") -> float:
    """Fraction of a step a stage sits idle under `schedule`, as the schedule registry states it ((p-1)/(m+p-1) for
    GPipe and 1F1B)."""
    return schedule_spec(schedule).bubble(stages, micro_batches)


def predict(measurements: Measurements, workload: Workload, layout: Layout) -> Prediction:
    """Predict one optimizer step of `workload` on `layout`.

    Each data group takes `global_batch / data` samples in `micro_batches` micro-batches; a stage does
    `1/stages` of the compute of each; a pipeline step lasts `m / (1 - bubble)` slots (1F1B's bubble, from the
    schedule registry: `m + p - 1` slots) of one micro-batch's stage compute plus its activation send and
    gradient send. Gradients (`parameter_bytes / stages` per stage) are
    then ring-allreduced over the data groups; the step pays the `exposed_allreduce` fraction of that time
    (all of it by default: an upper bound where the implementation overlaps the allreduce with backward).
    """
    samples_per_group = workload.global_batch / layout.data
    micro_batch = samples_per_group / layout.micro_batches
    slot_compute = measurements.compute_s_per_sample * micro_batch / layout.stages
    slot_p2p = 2 * measurements.p2p.seconds(workload.activation_bytes_per_sample * micro_batch) \
        if layout.stages > 1 else 0.0
    slots = layout.micro_batches / (1.0 - pipeline_bubble_fraction(layout.stages, layout.micro_batches))
    compute = layout.micro_batches * slot_compute
    allreduce = measurements.exposed_allreduce * ring_allreduce_seconds(workload.parameter_bytes / layout.stages,
                                                                         layout.data, measurements.allreduce)
    step = slots * (slot_compute + slot_p2p) + allreduce
    ideal = measurements.compute_s_per_sample * workload.global_batch / layout.ranks
    bubble = (slots - layout.micro_batches) * slot_compute
    return Prediction(layout=layout, step_s=step, compute_s=compute, bubble_s=bubble, p2p_s=slots * slot_p2p,
                      allreduce_s=allreduce, samples_per_s=workload.global_batch / step, efficiency=ideal / step)


def fit_link(nbytes: Sequence[float], seconds: Sequence[float]) -> LinkCost:
    """Least-squares alpha-beta fit `seconds = latency + nbytes / bandwidth` (latency clipped at 0).

    Raises:
        ValueError: with fewer than two distinct sizes, or times that do not grow with size.
    """
    sizes, times = numpy.asarray(nbytes, dtype=float), numpy.asarray(seconds, dtype=float)
    if sizes.shape != times.shape or len(numpy.unique(sizes)) < 2:
        raise ValueError(f"fit_link needs matching sizes and times with at least two distinct sizes, got "
                         f"{len(sizes)} sizes ({len(numpy.unique(sizes))} distinct) and {len(times)} times")
    slope, intercept = numpy.polyfit(sizes, times, 1)
    if slope <= 0:
        raise ValueError(f"times {list(times)} do not grow with message size {list(sizes)}; measure larger messages")
    return LinkCost(latency_s=max(float(intercept), 0.0), bandwidth_bytes_per_s=float(1.0 / slope))


def fit_ring_allreduce(nbytes: Sequence[float], seconds: Sequence[float], ranks: int) -> LinkCost:
    """Invert `ring_allreduce_seconds`: the link whose ring allreduce over `ranks` best matches the timings.

    Raises:
        ValueError: for fewer than 2 ranks, or as `fit_link`.
    """
    if ranks < 2:
        raise ValueError(f"an allreduce fit needs at least 2 ranks, got {ranks}")
    steps = 2 * (ranks - 1)
    scaled = fit_link([size * steps / ranks for size in nbytes], seconds)
    return LinkCost(latency_s=scaled.latency_s / steps, bandwidth_bytes_per_s=scaled.bandwidth_bytes_per_s)
