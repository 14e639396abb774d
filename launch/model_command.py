"""`mpiprop model`: predictions for data x pipeline layouts from stored or freshly measured costs."""
from __future__ import annotations

import json
import statistics

from mpiprop.launch.modeling import (format_predictions, measure_links_with, parse_layouts, predict_layouts,
                             with_micro_batches, workload_from_values)
from mpiprop.launch.mpiexec import RunOptions
from mpiprop.launch.perfmodel import LinkCost, Measurements, Workload
from mpiprop.launch.runner import Launcher
from mpiprop.launch.scale import BUILTIN_WORKLOAD
from mpiprop.launch.throughput import SCALE_MODE_VARIABLE, parse_throughput_line


def load_scaling_json(path: str) -> tuple[Measurements, Workload, dict[int, float]]:
    """Measurements, workload and measured throughput per rank count stored by `mpiprop scale --predict`.

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
    return measurements, workload_from_values(base_values), measured


def measure_now(launcher: Launcher, timeout: float) -> tuple[Measurements, Workload]:
    """Compute time and workload from the built-in benchmark on 1 rank; link costs from 2 ranks."""
    options = RunOptions(ranks=1, program=BUILTIN_WORKLOAD, threads_per_rank=1,
                         environment=((SCALE_MODE_VARIABLE, "strong"),))
    values = parse_throughput_line(launcher.run_captured(options, timeout=timeout))
    links = measure_links_with(launcher, timeout=timeout)
    measurements = Measurements(values["compute_s_per_sample"], links["allreduce"], links["p2p"])
    return measurements, workload_from_values(values)


def run_model(layouts_text: str, micro_batches: int | None, source: str | None, batch: int | None,
              timeout: float = 600) -> str:
    """The report `mpiprop model` prints: the inputs, then one predicted row per layout.

    Rows of pure data-parallel layouts also show the measured samples/s where `source` has that rank count.
    """
    layouts = [with_micro_batches(layout, micro_batches) for layout in parse_layouts(layouts_text)]
    if source:
        measurements, workload, measured = load_scaling_json(source)
    else:
        (measurements, workload), measured = measure_now(Launcher.detect(), timeout), {}
    if batch is not None:
        workload, measured = Workload(batch, workload.parameter_bytes, workload.activation_bytes_per_sample), {}
    predictions = predict_layouts(measurements, workload, layouts)
    table = format_predictions(predictions).splitlines()
    table[0] += f" {'measured':>11}"
    for index, prediction in enumerate(predictions, start=1):
        found = measured.get(prediction.layout.data) if prediction.layout.stages == 1 else None
        table[index] += f" {found:>11.1f}" if found is not None else f" {'-':>11}"
    return "\n".join([_describe_inputs(measurements, workload), *table])


def _describe_inputs(measurements: Measurements, workload: Workload) -> str:
    allreduce, p2p = measurements.allreduce, measurements.p2p
    return (f"compute {measurements.compute_s_per_sample * 1e6:.2f} us/sample; "
            f"allreduce latency {allreduce.latency_s * 1e6:.1f} us, "
            f"bandwidth {allreduce.bandwidth_bytes_per_s / 1e9:.2f} GB/s; "
            f"p2p latency {p2p.latency_s * 1e6:.1f} us, bandwidth {p2p.bandwidth_bytes_per_s / 1e9:.2f} GB/s\n"
            f"global batch {workload.global_batch}, gradients {workload.parameter_bytes / 2**20:.2f} MiB, "
            f"activations {workload.activation_bytes_per_sample} B/sample per stage boundary")
