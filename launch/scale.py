"""Scaling sweeps: run a workload at each rank count, then tabulate, save (CSV, JSON) and plot the results."""
from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from mpiprop.launch.contention import Forecast, alone_rank_counts, contention_forecast, uncontended_forecast
from mpiprop.launch.modeling import measure_links_with
from mpiprop.launch.mpiexec import RunOptions
from mpiprop.launch.perfmodel import Prediction
from mpiprop.launch.runner import Launcher
from mpiprop.launch.throughput import (NO_COMMUNICATION_VARIABLE, SCALE_MODE_VARIABLE, parse_throughput_line,
                                       ran_without_communication)

MODES = ("strong", "weak")
BUILTIN_WORKLOAD = ["-m", "mpiprop.launch.mlp_benchmark"]
CSV_COLUMNS = ("ranks", "samples_per_s", "samples_per_s_min", "samples_per_s_max", "speedup", "efficiency",
               "step_s", "predicted_samples_per_s", "predicted_samples_per_s_min", "predicted_samples_per_s_max",
               "predicted_efficiency", "predicted_step_s", "prediction_basis", "runs")
RUN_COLUMNS = ("ranks", "variant", "run", "samples_per_s", "step_s")


def parse_rank_list(text: str) -> list[int]:
    """Parse "1,2,4" into [1, 2, 4].

    Raises:
        ValueError: for an empty list, an entry that is not a positive integer, or a repeated count.
    """
    entries = [entry.strip() for entry in str(text).split(",")]
    if not all(entry.isdigit() and int(entry) > 0 for entry in entries):
        raise ValueError(f"cannot read rank list {text!r}; write positive integers separated by commas, e.g. 1,2,4")
    ranks = [int(entry) for entry in entries]
    if len(set(ranks)) != len(ranks):
        raise ValueError(f"rank list {text!r} repeats a rank count; give each once")
    return sorted(ranks)


def check_mode(mode: str) -> str:
    """Return `mode` if it is "strong" or "weak".

    Raises:
        ValueError: naming the accepted modes.
    """
    if mode not in MODES:
        raise ValueError(f"unknown scaling mode {mode!r}; use 'strong' (fixed global batch) or 'weak' "
                         "(fixed batch per rank)")
    return mode


@dataclass
class ScalePoint:
    """The repeated runs at one rank count: each run's `MPIPROP_THROUGHPUT` values."""

    ranks: int
    runs: list[dict[str, float]] = field(default_factory=list)

    def median(self, key: str) -> float | None:
        """Median of `key` over the runs, None when some run did not report it."""
        values = [run[key] for run in self.runs if key in run]
        return statistics.median(values) if values and len(values) == len(self.runs) else None

    @property
    def samples_per_s(self) -> float:
        """Median throughput over the runs."""
        return self.median("samples_per_s")


def scaling_rows(points: Sequence[ScalePoint], forecast: Forecast | None = None) -> list[dict]:
    """One row per rank count (measured, predicted, or both), with speedup and parallel efficiency.

    Speedup and efficiency are relative to the fewest measured ranks r0 with throughput T0:
    speedup = T / T0, efficiency = speedup / (r / r0). This is the usual definition for both
    strong scaling (fixed global batch) and weak scaling (fixed per-rank batch), since both
    compare samples per second. Predicted efficiency is measured against the same T0.
    """
    predictions = forecast.predictions if forecast else {}
    measured = {point.ranks: point for point in points}
    base = min(points, key=lambda point: point.ranks) if points else None
    rows = []
    for ranks in sorted(set(measured) | set(predictions)):
        row: dict[str, Any] = {column: None for column in CSV_COLUMNS}
        row["ranks"] = ranks
        point = measured.get(ranks)
        if point is not None:
            throughputs = [run["samples_per_s"] for run in point.runs]
            speedup = point.samples_per_s / base.samples_per_s
            row.update(samples_per_s=point.samples_per_s, samples_per_s_min=min(throughputs),
                       samples_per_s_max=max(throughputs), speedup=speedup,
                       efficiency=speedup / (ranks / base.ranks), step_s=point.median("step_s"),
                       runs=len(point.runs))
        if ranks in predictions:
            prediction = predictions[ranks]
            ideal = base.samples_per_s * ranks / base.ranks if base else None
            row.update(predicted_samples_per_s=prediction.samples_per_s,
                       predicted_samples_per_s_min=forecast.spread[ranks][0],
                       predicted_samples_per_s_max=forecast.spread[ranks][1],
                       predicted_efficiency=prediction.samples_per_s / ideal if ideal else prediction.efficiency,
                       predicted_step_s=prediction.step_s, prediction_basis=forecast.basis[ranks])
        rows.append(row)
    return rows


def single_run_warning(points: Sequence[ScalePoint]) -> str | None:
    """Why the speedup and efficiency cannot be trusted when some rank count was measured once; None otherwise.

    One run's throughput carries whatever else the machine did meanwhile, and the efficiency
    divides two such runs, so its noise is that of both (an efficiency above 1 is a common sign).
    """
    once = [point.ranks for point in points if len(point.runs) == 1]
    if len(points) < 2 or not once:
        return None
    counts = ", ".join(map(str, once))
    return (f"one run at {counts} rank(s): a single run per count cannot separate the speedup and efficiency from "
            "the machine's noise (an efficiency above 1 is often noise); run each count several times with "
            "--repeat 5 to report the median and the spread (samples_per_s_min, samples_per_s_max)")


def format_table(rows: Sequence[dict]) -> str:
    """The rows as a fixed-width table (predicted columns only when some row has them)."""
    with_predictions = any(row["predicted_samples_per_s"] is not None for row in rows)
    header = f"{'ranks':>5} {'samples/s':>11} {'speedup':>8} {'efficiency':>10}"
    if with_predictions:
        header += f" {'predicted samples/s':>20} {'predicted eff':>13}"
    lines = [header]
    for row in rows:
        line = (f"{row['ranks']:>5} {_number(row['samples_per_s'], 11, 1)} {_number(row['speedup'], 8, 2)} "
                f"{_number(row['efficiency'], 10, 2)}")
        if with_predictions:
            line += f" {_number(row['predicted_samples_per_s'], 20, 1)} {_number(row['predicted_efficiency'], 13, 2)}"
        lines.append(line)
    lines += [f"predicted at {row['ranks']}: {row['prediction_basis']}" for row in rows if row["prediction_basis"]]
    return "\n".join(lines)


def _number(value: float | None, width: int, decimals: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{decimals}f}"


def write_csv(rows: Sequence[dict], path: str, columns: Sequence[str] = CSV_COLUMNS) -> None:
    """Write the rows to `path` with `columns` (empty cells where a value is missing)."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({key: "" if row.get(key) is None else row[key] for key in columns} for row in rows)


def run_rows(runs: dict[str, dict[int, list[dict[str, float]]]]) -> list[dict]:
    """Every run as one row of `RUN_COLUMNS`, from {variant: {ranks: [throughput values of each run]}}."""
    return [{**values, "ranks": ranks, "variant": variant, "run": index + 1}
            for variant, by_ranks in runs.items() for ranks, values_list in sorted(by_ranks.items())
            for index, values in enumerate(values_list)]


def describe_environment(timeout: float = 120) -> dict[str, Any]:
    """`mpiprop info --json` run in a separate process (so this one never initialises MPI)."""
    completed = subprocess.run([sys.executable, "-m", "mpiprop.launch", "info", "--json"], capture_output=True, text=True,
                               timeout=timeout)
    if completed.returncode != 0:
        return {"error": completed.stderr.strip()[-500:]}
    return json.loads(completed.stdout)


@dataclass(frozen=True)
class ScaleConfig:
    """One scaling experiment.

    Attributes:
        ranks: rank counts to measure.
        mode: "strong" or "weak" (given to the workload as $MPIPROP_SCALE_MODE).
        out: directory for scaling.csv, scaling.json and scaling.png.
        program: the workload (script and arguments, or ["-m", module, ...]); the built-in MLP benchmark if empty.
        repeat: runs per rank count (the median is reported; every run is kept in scaling.json and
            scaling_runs.csv).
        threads_per_rank: BLAS threads per rank (1 by default, so ranks, not threads, do the scaling).
        hostfile: hosts for runs across nodes.
        predict: further rank counts to predict with the performance model (links measured on 2 ranks, the
            workload's no-communication variant run `repeat` times at each count this node holds);
            predictions are also made for the measured counts.
        timeout: seconds allowed for each run.
    """

    ranks: tuple[int, ...]
    mode: str = "strong"
    out: str = "scaling"
    program: tuple[str, ...] = ()
    repeat: int = 1
    threads_per_rank: int = 1
    hostfile: str | None = None
    predict: tuple[int, ...] = ()
    timeout: float = 600

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if not self.ranks:
            raise ValueError("give at least one rank count, e.g. --ranks 1,2,4")
        if isinstance(self.repeat, bool) or not isinstance(self.repeat, int) or self.repeat < 1:
            raise ValueError(f"--repeat must be a positive integer, got {self.repeat!r}")

    @property
    def workload(self) -> list[str]:
        """The program each run executes."""
        return list(self.program) if self.program else list(BUILTIN_WORKLOAD)

    def run_options(self, ranks: int, alone: bool = False) -> RunOptions:
        """How to launch the workload on `ranks` ranks (`alone`: its no-communication variant)."""
        environment = ((SCALE_MODE_VARIABLE, self.mode),) + (((NO_COMMUNICATION_VARIABLE, "1"),) if alone else ())
        return RunOptions(ranks=ranks, program=self.workload, hostfile=self.hostfile,
                          threads_per_rank=self.threads_per_rank, environment=environment)


def alone_counts(config: ScaleConfig, launcher: Launcher) -> dict[int, int]:
    """Per count to predict (measured or in `config.predict`), the count whose runs alone give its compute time;
    empty without `config.predict`."""
    if not config.predict:
        return {}
    targets = sorted(set(config.ranks) | set(config.predict))
    return alone_rank_counts(targets, launcher.cores, config.hostfile is not None)


def measure_points(config: ScaleConfig, launcher: Launcher, log: Callable[[str], None] = print,
                   alone_at: Sequence[int] = ()) -> tuple[list[ScalePoint], list[ScalePoint] | None]:
    """Run the workload `config.repeat` times at each rank count, interleaving the counts between repeats.

    Args:
        alone_at: counts at which to run the workload's no-communication variant too, each right after the
            data-parallel run at that count (so both see the same load on the machine).

    Returns:
        The data-parallel points, and the points alone (None when the workload's first run alone shows
        that it has no no-communication variant; it is not run again).
    """
    jobs = sorted([(ranks, False) for ranks in config.ranks] + [(ranks, True) for ranks in set(alone_at)])
    runs: dict[tuple[int, bool], list[dict[str, float]]] = {job: [] for job in jobs}
    has_variant = True
    for repeat in range(config.repeat):
        for ranks, alone in jobs:
            if alone and not has_variant:
                continue
            values = parse_throughput_line(launcher.run_captured(config.run_options(ranks, alone),
                                                                 timeout=config.timeout))
            has_variant = has_variant and (not alone or ran_without_communication(values))
            if alone and not has_variant:
                continue
            runs[ranks, alone].append(values)
            log(f"ranks {ranks:>3}{'alone' if alone else '':>6}  run {repeat + 1}/{config.repeat}  "
                f"{values['samples_per_s']:.1f} samples/s")
    points = [ScalePoint(ranks, runs[ranks, alone]) for ranks, alone in jobs if not alone]
    return points, [ScalePoint(ranks, runs[ranks, alone]) for ranks, alone in jobs if alone] if has_variant else None


def forecast_sweep(config: ScaleConfig, points: Sequence[ScalePoint], alone: Sequence[ScalePoint] | None,
                   sources: dict[int, int], links: dict, cores: int) -> Forecast:
    """Predict every count of `sources` (see `alone_counts`) from the runs alone at their source counts, so
    each prediction carries the slowdown of ranks sharing the node; without runs alone (`alone` None), the
    alpha-beta model from the fewest measured ranks."""
    base = points[0]
    base_values = {key: base.median(key) for key in base.runs[0] if base.median(key) is not None}
    if alone is None:
        return uncontended_forecast(base.ranks, base_values, links, config.mode, sorted(sources))
    return contention_forecast(base.ranks, base_values, links, config.mode,
                               {point.ranks: point.runs for point in points},
                               {point.ranks: point.runs for point in alone}, sources, cores,
                               config.hostfile is not None)


def run_scaling(config: ScaleConfig, launcher: Launcher, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure, predict (when asked), and write scaling.csv, scaling_runs.csv, scaling.json and scaling.png
    under `config.out`.

    The plot is skipped, with a warning through `log`, when matplotlib is not installed.

    Returns:
        The content of scaling.json.
    """
    os.makedirs(config.out, exist_ok=True)
    sources = alone_counts(config, launcher)
    points, alone = measure_points(config, launcher, log, sorted(set(sources.values())))
    forecast, links = None, None
    if config.predict:
        links = measure_links_with(launcher, timeout=config.timeout)
        forecast = forecast_sweep(config, points, alone, sources, links, launcher.cores)
        log(("warning: " if alone is None else "") + forecast.note)
    alone = alone or []
    rows = scaling_rows(points, forecast)
    runs = {"data parallel": {point.ranks: point.runs for point in points},
            "alone": {point.ranks: point.runs for point in alone}}
    result = {
        "mode": config.mode, "workload": config.workload, "repeat": config.repeat,
        "noise_warning": single_run_warning(points),
        "threads_per_rank": config.threads_per_rank, "rows": rows,
        "runs": {str(point.ranks): point.runs for point in points},
        "alone_runs": {str(point.ranks): point.runs for point in alone},
        "links": {name: asdict(link) for name, link in links.items()} if links else None,
        "exposed_allreduce": forecast.exposed_allreduce if forecast else None,
        "overhead_s": forecast.overhead_s if forecast else None,
        "prediction_note": forecast.note if forecast else None,
        "predictions": {str(ranks): _prediction_dict(prediction)
                        for ranks, prediction in (forecast.predictions if forecast else {}).items()},
        "environment": describe_environment(),
    }
    write_csv(rows, os.path.join(config.out, "scaling.csv"))
    write_csv(run_rows(runs), os.path.join(config.out, "scaling_runs.csv"), RUN_COLUMNS)
    log(f"every run: {os.path.join(config.out, 'scaling_runs.csv')}")
    with open(os.path.join(config.out, "scaling.json"), "w") as handle:
        json.dump(result, handle, indent=2)
    from mpiprop.launch.plot import plot_scaling

    try:
        plot_scaling(rows, config.mode, os.path.join(config.out, "scaling.png"), title=_title(config, result))
    except ImportError as error:
        log(f"warning: no scaling.png: {error}")
    return result


def _prediction_dict(prediction: Prediction) -> dict[str, Any]:
    values = asdict(prediction)
    values["layout"] = asdict(prediction.layout)
    return values


def workload_name(program: Sequence[str]) -> str:
    """A short name for a workload: "MLP benchmark", a module's name, or a script's file name."""
    if not program or list(program[:2]) == BUILTIN_WORKLOAD:
        return "MLP benchmark"
    return program[1] if program[0] == "-m" and len(program) > 1 else os.path.basename(program[0])


def _title(config: ScaleConfig, result: dict[str, Any]) -> str:
    environment = result["environment"]
    return (f"{config.mode} scaling, {workload_name(config.program)}: {environment.get('mpi_library', 'MPI')}, "
            f"{environment.get('cores', '?')} cores, {config.threads_per_rank} thread(s) per rank")
