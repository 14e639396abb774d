"""`mpiprop model`: step time of data x pipeline layouts from measured costs, and whether a model fits each layout."""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, replace

from mpiprop.launch.contention import alone_source, compute_with_contention
from mpiprop.launch.memory_model import (ModelDescription, ParallelLayout, busiest_rank, check_fits_layout,
                                         format_bytes, parse_parallel_layouts, rank_memory, shortfall)
from mpiprop.launch.modeling import (default_micro_batches, format_predictions, measure_links_with,
                                    performance_layout, with_micro_batches, workload_from_values)
from mpiprop.launch.mlp_benchmark import build_parser
from mpiprop.launch.mpiexec import RunOptions
from mpiprop.launch.perfmodel import Layout, LinkCost, Measurements, Workload, predict
from mpiprop.launch.runner import Launcher
from mpiprop.launch.scale import BUILTIN_WORKLOAD
from mpiprop.launch.throughput import SCALE_MODE_VARIABLE, parse_throughput_line
from mpiprop.network.training.memory_report import MIB


@dataclass(frozen=True)
class Contention:
    """What `mpiprop scale --predict` measured of ranks slowing each other on a node.

    Attributes:
        alone_samples_per_s: per rank count, the median samples/s of the workload run with no communication.
        overhead_s: seconds the data-parallel machinery adds to each step besides the allreduce.
        exposed_allreduce: the fraction of the allreduce not hidden behind backward.
    """

    alone_samples_per_s: dict[int, float]
    overhead_s: float
    exposed_allreduce: float

    def measurements_at(self, measurements: Measurements, ranks: int, global_batch: int) -> Measurements:
        """`measurements` with the compute time of a rank among `ranks` (see `alone_source`) and the exposed part
        of the allreduce measured by the sweep."""
        source = alone_source(ranks, list(self.alone_samples_per_s))
        compute = compute_with_contention(ranks, self.alone_samples_per_s[source] / source, self.overhead_s,
                                          global_batch)
        return replace(measurements, compute_s_per_sample=compute, exposed_allreduce=self.exposed_allreduce)

    def describe(self) -> str:
        paces = ", ".join(f"{ranks} ranks {ranks / samples_per_s * 1e6:.2f} us/sample"
                          for ranks, samples_per_s in sorted(self.alone_samples_per_s.items()))
        return (f"contention: compute per rank measured alone (no communication) at {paces}, plus "
                f"{self.overhead_s * 1e3:.3f} ms of data-parallel overhead per step; {self.exposed_allreduce:.2f} "
                "of the allreduce exposed; larger counts take the most ranks measured below them")


def load_scaling_json(path: str) -> tuple[Measurements, Workload, dict[int, float], Contention | None]:
    """Measurements, workload, measured throughput per rank count, and the contention measured (None when the
    sweep had no runs alone) stored by `mpiprop scale --predict`.

    Raises:
        ValueError: when the file holds no link measurements (it was made without --predict).
    """
    with open(path) as handle:
        result = json.load(handle)
    if not result.get("links"):
        raise ValueError(f"{path} holds no link measurements; make it with `mpiprop scale ... --predict R`")
    base_runs = result["runs"][str(min(int(ranks) for ranks in result["runs"]))]
    base_values = {key: statistics.median(run[key] for run in base_runs) for key in base_runs[0]}
    links = {name: LinkCost(**values) for name, values in result["links"].items()}
    measurements = Measurements(base_values["compute_s_per_sample"], links["allreduce"], links["p2p"])
    measured = {} if result["mode"] != "strong" else \
        {row["ranks"]: row["samples_per_s"] for row in result["rows"] if row["samples_per_s"] is not None}
    alone = {int(ranks): statistics.median(float(run["samples_per_s"]) for run in runs)
             for ranks, runs in (result.get("alone_runs") or {}).items() if runs}
    overhead, exposed = result.get("overhead_s"), result.get("exposed_allreduce")
    contention = Contention(alone, 0.0 if overhead is None else float(overhead),
                            1.0 if exposed is None else float(exposed)) if alone else None
    return measurements, workload_from_values(base_values), measured, contention


def measure_now(launcher: Launcher, timeout: float) -> tuple[Measurements, Workload]:
    """Compute time and workload from the built-in benchmark on 1 rank; link costs from 2 ranks."""
    options = RunOptions(ranks=1, program=BUILTIN_WORKLOAD, threads_per_rank=1,
                         environment=((SCALE_MODE_VARIABLE, "strong"),))
    values = parse_throughput_line(launcher.run_captured(options, timeout=timeout))
    links = measure_links_with(launcher, timeout=timeout)
    measurements = Measurements(values["compute_s_per_sample"], links["allreduce"], links["p2p"])
    return measurements, workload_from_values(values)


@dataclass(frozen=True)
class FitQuestion:
    """Whether `model` fits in `memory_per_rank` bytes on every rank of each layout."""

    model: ModelDescription
    memory_per_rank: int


def run_model(layouts_text: str, micro_batches: int | None, source: str | None, batch: int | None,
              timeout: float = 600, fit: FitQuestion | None = None) -> str:
    """The report `mpiprop model` prints: the inputs, then one predicted row per layout; with `fit`, then
    each layout's memory per rank and whether it fits.

    Rows of pure data-parallel layouts also show the measured samples/s where `source` has that rank count.
    Nothing is measured when every layout is one the performance model does not cover (tensor parallel,
    sharded optimizer state).

    Raises:
        ValueError: for a layout that only the memory model covers, asked without `fit`; as
            `rank_memory` for a layout that cannot hold the model.
    """
    layouts = parse_parallel_layouts(layouts_text)
    uncovered = [layout.name for layout in layouts if performance_layout(layout) is None]
    if uncovered and fit is None:
        raise ValueError(f"layouts {', '.join(uncovered)} have no performance prediction (it covers D and DxS "
                         "layouts); add --memory-per-rank to see whether the model fits them")
    for layout in layouts if fit is not None else []:
        check_fits_layout(fit.model, layout)  # before any measuring run
    sections = []
    covered = [with_micro_batches(performance_layout(layout), micro_batches) for layout in layouts
               if performance_layout(layout) is not None]
    if covered:
        performance, workload = _performance_report(covered, source, batch, timeout)
        sections.append(performance)
        batch = workload.global_batch if batch is None else batch
    if fit is not None:
        if uncovered and covered:
            sections.append(f"(no performance prediction for {', '.join(uncovered)})")
        sections.append(format_memory_fit(fit, layouts, batch or builtin_batch(), micro_batches))
    return "\n".join(sections)


def builtin_widths() -> tuple[int, ...]:
    """Layer widths of the built-in workload's MLP at its default sizes (`mpiprop.launch.mlp_benchmark`)."""
    defaults = build_parser().parse_args([])
    return (defaults.features, *[defaults.hidden] * defaults.layers, defaults.classes)


def builtin_batch() -> int:
    """The built-in workload's default global batch."""
    return build_parser().parse_args([]).batch


def _performance_report(layouts: list[Layout], source: str | None, batch: int | None,
                        timeout: float) -> tuple[str, Workload]:
    contention = None
    if source:
        measurements, workload, measured, contention = load_scaling_json(source)
    else:
        (measurements, workload), measured = measure_now(Launcher.detect(), timeout), {}
    if batch is not None:
        workload, measured = Workload(batch, workload.parameter_bytes, workload.activation_bytes_per_sample), {}
    predictions = [predict(measurements if contention is None else
                           contention.measurements_at(measurements, layout.ranks, workload.global_batch),
                           workload, layout) for layout in layouts]
    table = format_predictions(predictions).splitlines()
    table[0] += f" {'measured':>11}"
    for index, prediction in enumerate(predictions, start=1):
        found = measured.get(prediction.layout.data) if prediction.layout.stages == 1 else None
        table[index] += f" {found:>11.1f}" if found is not None else f" {'-':>11}"
    described = _describe_inputs(measurements, workload)
    if source:
        described += "\n" + (contention.describe() if contention is not None else
                             f"no runs alone in {source}: compute as on the fewest ranks, whatever the count "
                             "(ranks that share a node slow each other; make it with a workload that has a "
                             "no-communication variant)")
    return "\n".join([described, *table]), workload


def format_memory_fit(fit: FitQuestion, layouts: list[ParallelLayout], global_batch: int,
                      micro_batches: int | None) -> str:
    """A line describing the model, then per layout the busiest rank's memory in MiB and whether it fits.

    Raises:
        ValueError: as `rank_memory`.
    """
    model = fit.model
    lines = [f"memory per rank: MLP {','.join(map(str, model.widths))}, {model.optimizer}, {model.dtype}, "
             f"global batch {global_batch}{', recompute' if model.recompute else ''}; "
             f"{format_bytes(fit.memory_per_rank)} per rank",
             f"{'layout':<12} {'ranks':>5} {'micro':>5} {'params MiB':>11} {'grads MiB':>10} {'optim MiB':>10} "
             f"{'peak act MiB':>13} {'total MiB':>10}  fits"]
    for layout in layouts:
        micro = default_micro_batches(layout.stages, micro_batches) if layout.stages > 1 else 1
        report = busiest_rank(rank_memory(model, layout, global_batch, micro))
        missing = shortfall(report, fit.memory_per_rank)
        verdict = "fits" if not missing else f"does not fit (needs {format_bytes(missing)} more)"
        lines.append(f"{layout.name:<12} {layout.ranks:>5} {micro:>5} {report.parameters / MIB:>11.3f} "
                     f"{report.gradients / MIB:>10.3f} {report.optimizer_state / MIB:>10.3f} "
                     f"{report.peak_activations / MIB:>13.3f} {report.total / MIB:>10.3f}  {verdict}")
    return "\n".join(lines)


def _describe_inputs(measurements: Measurements, workload: Workload) -> str:
    allreduce, p2p = measurements.allreduce, measurements.p2p
    return (f"compute {measurements.compute_s_per_sample * 1e6:.2f} us/sample; "
            f"allreduce latency {allreduce.latency_s * 1e6:.1f} us, "
            f"bandwidth {allreduce.bandwidth_bytes_per_s / 1e9:.2f} GB/s; "
            f"p2p latency {p2p.latency_s * 1e6:.1f} us, bandwidth {p2p.bandwidth_bytes_per_s / 1e9:.2f} GB/s\n"
            f"global batch {workload.global_batch}, gradients {workload.parameter_bytes / 2**20:.2f} MiB, "
            f"activations {workload.activation_bytes_per_sample} B/sample per stage boundary")
