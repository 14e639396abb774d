"""Ranks of one node slow each other's compute: predictions built on the workload run alone at each rank count."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

from mpiprop.launch.modeling import global_batch_at, predict_sweep
from mpiprop.launch.perfmodel import LinkCost, Prediction, ring_allreduce_seconds
from mpiprop.launch.throughput import NO_COMMUNICATION_VARIABLE


@dataclass(frozen=True)
class Forecast:
    """Predictions for a sweep and where each comes from.

    Attributes:
        predictions: per rank count, the prediction from the median of the runs alone.
        spread: per rank count, the lowest and highest predicted samples/s over the repeated runs alone.
        basis: per rank count, which parts of the prediction are measured and which extrapolated.
        exposed_allreduce: the fraction of the modelled allreduce added to the step time.
        overhead_s: seconds the data-parallel machinery adds to each step besides the allreduce.
        note: a line saying what the whole forecast rests on.
    """

    predictions: dict[int, Prediction]
    spread: dict[int, tuple[float, float]]
    basis: dict[int, str]
    exposed_allreduce: float
    overhead_s: float
    note: str


def alone_rank_counts(rank_counts: Sequence[int], cores: int, across_nodes: bool) -> dict[int, int]:
    """For each rank count, the count at which to run the workload alone to learn its compute time.

    A count that fits this node's `cores` (or any count, when the runs span nodes through a hostfile) is run
    as it is; a larger one on this node takes the most ranks among `rank_counts` that fit the node (the
    workload is known to accept them: a strong-scaling batch may not split over `cores` ranks), or `cores`
    when none does, as if its further ranks ran on further nodes loaded like this one.
    """
    fitting = [ranks for ranks in rank_counts if ranks <= cores]
    fullest = max(fitting) if fitting else cores
    return {ranks: ranks if across_nodes or ranks <= cores else fullest for ranks in rank_counts}


def fit_communication(extra_s: dict[int, float], allreduce_s: dict[int, float]) -> tuple[float, float | None]:
    """Split what data-parallel steps cost beyond the same steps alone into a fixed part and exposed allreduce.

    The extra time at N ranks is modelled as `overhead + ratio * allreduce_s[N]`: the overhead (the
    data-parallel machinery's own work each step) is the extra time on 1 rank, where nothing is reduced (0 when
    1 rank was not measured, never below 0); `ratio` is the median over counts of 2 ranks or more of
    (extra - overhead) / allreduce. Between 0 and 1 it is the fraction of the allreduce not hidden behind
    backward; outside, the measured extra time disagrees with the modelled links.

    Args:
        extra_s: per measured rank count, a data-parallel step's time minus the same step's time alone.
        allreduce_s: the modelled (whole) allreduce time at each count.

    Returns:
        (overhead in seconds, ratio or None when no count of 2 ranks or more has both).
    """
    overhead = max(extra_s.get(1, 0.0), 0.0)
    ratios = [(extra_s[ranks] - overhead) / allreduce_s[ranks]
              for ranks in sorted(extra_s) if ranks >= 2 and allreduce_s.get(ranks)]
    return overhead, statistics.median(ratios) if ratios else None


def paired_extra_seconds(batch: int, runs: list[dict[str, float]], alone_runs: list[dict[str, float]]) -> float:
    """The median over paired runs (the i-th data-parallel run with the i-th run alone, made one after the other)
    of the step time the data-parallel run took beyond the run alone, for a global batch of `batch`."""
    return statistics.median(batch / run["samples_per_s"] - batch / alone["samples_per_s"]
                             for run, alone in zip(runs, alone_runs))


def contention_forecast(base_ranks: int, base_values: dict[str, float], links: dict[str, LinkCost], mode: str,
                        measured_runs: dict[int, list[dict[str, float]]],
                        alone_runs: dict[int, list[dict[str, float]]], sources: dict[int, int], cores: int,
                        across_nodes: bool) -> Forecast:
    """Predict each count of `sources` as its step alone, plus the data-parallel overhead and the exposed part
    of the modelled allreduce (both from `fit_communication`; the predictions' `compute_s` includes the overhead).

    Args:
        base_ranks: the fewest measured ranks; `base_values` are that run's throughput values.
        links: fitted link costs ("allreduce", "p2p").
        mode: "strong" or "weak".
        measured_runs: the data-parallel runs, per measured count.
        alone_runs: the runs alone (no communication), per count they ran at, paired in order with the
            data-parallel runs at the same count and all with as many runs.
        sources: per count to predict, the count whose runs alone give its compute time (`alone_rank_counts`).
        cores: this node's cores; across_nodes: whether the runs span nodes through a hostfile.
    """
    batch = {ranks: global_batch_at(ranks, base_ranks, base_values["global_batch"], mode) for ranks in sources}
    alone = {ranks: statistics.median(run["samples_per_s"] for run in runs) for ranks, runs in alone_runs.items()}
    overhead, ratio = fit_communication(
        {ranks: paired_extra_seconds(batch[ranks], runs, alone_runs[ranks]) for ranks, runs in measured_runs.items()
         if ranks in alone_runs and sources.get(ranks) == ranks},
        {ranks: ring_allreduce_seconds(base_values["parameter_bytes"], ranks, links["allreduce"]) for ranks in sources})
    exposed = 1.0 if ratio is None else min(max(ratio, 0.0), 1.0)

    def predictions_from(samples_per_s_alone: dict[int, float]) -> dict[int, Prediction]:
        compute = {ranks: compute_with_contention(ranks, samples_per_s_alone[source] / source, overhead, batch[ranks])
                   for ranks, source in sources.items()}
        return predict_sweep(base_ranks, base_values, links, mode, sorted(sources), compute, exposed)

    repeats = min(len(runs) for runs in alone_runs.values())
    each_run = [predictions_from({ranks: runs[index]["samples_per_s"] for ranks, runs in alone_runs.items()})
                for index in range(repeats)]
    fitted = [ranks for ranks in measured_runs if ranks >= 2 and sources.get(ranks) == ranks]
    note = (f"predicted: each count's step measured alone (no communication), plus {overhead * 1e3:.3f} ms of "
            f"data-parallel overhead per step (measured on 1 rank), plus {_describe_exposed(ratio, exposed, fitted)}")
    return Forecast(predictions=predictions_from(alone), spread=_spread(each_run),
                    basis={ranks: describe_basis(ranks, source, cores, across_nodes)
                           for ranks, source in sources.items()},
                    exposed_allreduce=exposed, overhead_s=overhead, note=note)


def compute_with_contention(ranks: int, samples_per_s_per_rank_alone: float, overhead_s: float,
                            global_batch: int) -> float:
    """One rank's compute seconds per sample while `ranks` ranks run: the rank's pace in a run alone (no
    communication) with as many ranks on its node, plus the data-parallel overhead per step spread over
    the samples each rank computes."""
    return 1.0 / samples_per_s_per_rank_alone + overhead_s * ranks / global_batch


def alone_source(ranks: int, alone_counts: Sequence[int]) -> int:
    """The count of runs alone that stands for `ranks`: itself when measured, else the most ranks measured below
    it (as if its further ranks ran on further nodes loaded alike), else the fewest measured."""
    below = [count for count in alone_counts if count <= ranks]
    return max(below) if below else min(alone_counts)


def _spread(each_run: list[dict[int, Prediction]]) -> dict[int, tuple[float, float]]:
    """Per rank count, the lowest and highest predicted samples/s over the runs."""
    return {ranks: (min(run[ranks].samples_per_s for run in each_run),
                    max(run[ranks].samples_per_s for run in each_run)) for ranks in each_run[0]}


def _describe_exposed(ratio: float | None, exposed: float, fitted: list[int]) -> str:
    if ratio is None:
        return "the whole modelled allreduce (no measured count of 2 ranks or more to fit its hidden part on)"
    counts = ", ".join(map(str, fitted))
    if ratio > 1:
        return (f"the whole modelled allreduce; the measured {counts} ranks spent {ratio:.1f} times it beyond "
                "their steps alone, more than the links measured alone explain (as when other work keeps ranks "
                "off their cores), so the predictions may be too high")
    return f"{exposed:.2f} of the modelled allreduce (the part not hidden behind backward, fitted on the measured " \
           f"{counts} ranks)"


def describe_basis(ranks: int, source: int, cores: int, across_nodes: bool) -> str:
    """What the prediction at `ranks` rests on, when its compute time comes from the runs alone at `source` ranks."""
    links = "communication modelled from links measured on this node"
    if across_nodes:
        return f"compute measured alone at {_ranks(ranks)} on the hostfile's nodes; {links}, not between nodes"
    if source == ranks:
        return f"compute measured alone at {_ranks(ranks)} on this node; {links}"
    return (f"compute extrapolated: {ranks} ranks exceed this node's {cores} cores, so {_ranks(source)} alone on "
            f"this node give the compute per sample, as if the others ran on further nodes loaded alike; {links}, "
            "not between nodes")


def _ranks(count: int) -> str:
    return f"{count} rank" + ("s" if count != 1 else "")


def uncontended_forecast(base_ranks: int, base_values: dict[str, float], links: dict[str, LinkCost], mode: str,
                         rank_counts: Sequence[int]) -> Forecast:
    """The alpha-beta model alone, for a workload without a no-communication variant: every count computes as
    fast per sample as the base run, however many ranks share the node."""
    predictions = predict_sweep(base_ranks, base_values, links, mode, rank_counts)
    basis = f"compute from the {_ranks(base_ranks)} run, without contention; communication modelled"
    note = (f"the workload has no no-communication variant (its MPIPROP_THROUGHPUT line lacks communication=0 "
            f"under {NO_COMMUNICATION_VARIABLE}=1), so the predictions ignore how ranks on one node slow each "
            f"other's compute and overestimate larger counts")
    return Forecast(predictions, {ranks: (p.samples_per_s, p.samples_per_s) for ranks, p in predictions.items()},
                    {ranks: basis for ranks in predictions}, 1.0, 0.0, note)
