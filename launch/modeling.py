"""Feeding the performance model from real runs: link measurements under mpiexec, layouts, predictions for a sweep."""
from __future__ import annotations

import json
from typing import Iterable, Sequence

from mpiprop.launch.measure import MEASURE_TAG
from mpiprop.launch.memory_model import ParallelLayout, parse_parallel_layouts
from mpiprop.launch.mpiexec import RunOptions
from mpiprop.launch.perfmodel import Layout, LinkCost, Measurements, Prediction, Workload, predict
from mpiprop.launch.runner import Launcher

WORKLOAD_KEYS = ("compute_s_per_sample", "parameter_bytes", "global_batch")


def parse_layouts(text: str) -> list[Layout]:
    """Parse "8,4x2,2x4" into layouts the performance model covers: "D" is D data-parallel ranks, "DxS" D
    data groups of S pipeline stages.

    Raises:
        ValueError: naming the entry that is not "D" or "DxS" with positive integers, or that names
            tensor parallelism or sharded optimizer state (which only the memory model covers).
    """
    layouts = []
    for layout in parse_parallel_layouts(text):
        covered = performance_layout(layout)
        if covered is None:
            raise ValueError(f"cannot read layout {layout.name!r} in {text!r} as data x pipeline stages: the "
                             "performance model covers D and DxS layouts; tensor parallelism and :zero1/:zero2 "
                             "have a memory prediction only (--memory-per-rank)")
        layouts.append(covered)
    return layouts


def performance_layout(layout: ParallelLayout) -> Layout | None:
    """`layout` as the performance model's Layout, or None where it is not data x pipeline alone."""
    if layout.tensor > 1 or layout.zero:
        return None
    return Layout(data=layout.data, stages=layout.stages)


def default_micro_batches(stages: int, micro_batches: int | None) -> int:
    """`micro_batches`, or by default 1 without a pipeline and 4 per stage with one."""
    if micro_batches is not None:
        return micro_batches
    return 1 if stages == 1 else 4 * stages


def with_micro_batches(layout: Layout, micro_batches: int | None) -> Layout:
    """`layout` with `micro_batches` (default: 1 without a pipeline, 4 per stage with one)."""
    return Layout(layout.data, layout.stages, default_micro_batches(layout.stages, micro_batches))


def parse_link_line(output: str) -> dict[str, LinkCost]:
    """The link costs on the `MPIPROP_LINKS {json}` line printed by `mpiprop.launch.measure`.

    Raises:
        ValueError: when the output holds no such line.
    """
    for line in reversed(output.splitlines()):
        if line.startswith(MEASURE_TAG + " "):
            values = json.loads(line[len(MEASURE_TAG) + 1:])
            return {name: LinkCost(**values[name]) for name in ("p2p", "allreduce")}
    raise ValueError(f"the link measurement printed no {MEASURE_TAG} line; its output was:\n{output[-2000:]}")


def measure_links_with(launcher: Launcher, ranks: int = 2, timeout: float = 300) -> dict[str, LinkCost]:
    """Run `mpiprop.launch.measure` on `ranks` ranks (one thread each) and return the fitted p2p and allreduce costs."""
    options = RunOptions(ranks=ranks, program=["-m", "mpiprop.launch.measure"], threads_per_rank=1)
    return parse_link_line(launcher.run_captured(options, timeout=timeout))


def workload_from_values(values: dict[str, float]) -> Workload:
    """The model's workload from a run's throughput values.

    Raises:
        ValueError: when the workload did not report what the model needs.
    """
    missing = [key for key in WORKLOAD_KEYS if key not in values]
    if missing:
        raise ValueError(f"predicting needs the workload's MPIPROP_THROUGHPUT line to report {', '.join(missing)} "
                         "(the built-in MLP benchmark does; add them to your script's line)")
    return Workload(global_batch=int(values["global_batch"]), parameter_bytes=int(values["parameter_bytes"]),
                    activation_bytes_per_sample=int(values.get("activation_bytes_per_sample", 0)))


def predict_sweep(base_ranks: int, base_values: dict[str, float], links: dict[str, LinkCost], mode: str,
                  rank_counts: Iterable[int], compute_s_per_sample: dict[int, float] | None = None,
                  exposed_allreduce: float = 1.0) -> dict[int, Prediction]:
    """Predict data-parallel runs at `rank_counts` from the run at `base_ranks` (its compute time and workload).

    Strong scaling keeps the base run's global batch; weak scaling keeps its per-rank batch.

    Args:
        compute_s_per_sample: per rank count, the compute time per sample of one rank while that many ranks
            compute (contention included); counts it lacks take the base run's `compute_s_per_sample`.
        exposed_allreduce: the fraction of the allreduce that does not overlap backward.
    """
    workload = workload_from_values(base_values)
    predictions = {}
    for ranks in rank_counts:
        compute = (compute_s_per_sample or {}).get(ranks, base_values["compute_s_per_sample"])
        measurements = Measurements(compute, links["allreduce"], links["p2p"], exposed_allreduce)
        batch = global_batch_at(ranks, base_ranks, workload.global_batch, mode)
        scaled = Workload(batch, workload.parameter_bytes, workload.activation_bytes_per_sample)
        predictions[ranks] = predict(measurements, scaled, Layout(data=ranks))
    return predictions


def global_batch_at(ranks: int, base_ranks: int, base_batch: float, mode: str) -> int:
    """The global batch at `ranks`: the base run's in strong scaling, its per-rank batch times `ranks` in weak."""
    return int(base_batch) if mode == "strong" else round(base_batch / base_ranks * ranks)


def format_predictions(predictions: Sequence[Prediction]) -> str:
    """A table of predicted step time, its parts, throughput and efficiency per layout."""
    header = (f"{'ranks':>5} {'data':>5} {'stages':>6} {'micro':>5} {'step ms':>9} {'compute':>9} {'bubble':>9} "
              f"{'p2p':>9} {'allreduce':>9} {'samples/s':>11} {'eff':>6}")
    lines = [header]
    for p in predictions:
        lines.append(f"{p.layout.ranks:>5} {p.layout.data:>5} {p.layout.stages:>6} {p.layout.micro_batches:>5} "
                     f"{p.step_s * 1e3:>9.3f} {p.compute_s * 1e3:>9.3f} {p.bubble_s * 1e3:>9.3f} "
                     f"{p.p2p_s * 1e3:>9.3f} {p.allreduce_s * 1e3:>9.3f} {p.samples_per_s:>11.1f} "
                     f"{p.efficiency:>6.2f}")
    return "\n".join(lines)
