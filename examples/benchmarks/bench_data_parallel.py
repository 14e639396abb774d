"""Data-parallel speed: weak scaling 1 -> N ranks and against N independent ranks, PyTorch DDP, allreduce bandwidth.

    python examples/benchmarks/bench_data_parallel.py                 # 2 ranks, 5 interleaved rounds
    python examples/benchmarks/bench_data_parallel.py --rounds 3 --steps 20 --json dp.json

The driver starts every measurement itself with `mpiexec` (one BLAS thread per rank), in
interleaved rounds: 1 rank without DataParallel, N independent ranks (the same training
without DataParallel and with no communication: the ceiling, since N ranks on one machine
share its memory bandwidth and caches), N ranks with DataParallel summing in shared memory
(its default on one node), N ranks with DataParallel on MPI's allreduce
(`shared_memory=False`), N ranks of PyTorch DistributedDataParallel over gloo (when torch is
installed). It reports medians, for both DataParallel variants:
  - weak-scaling efficiency: N-rank global samples/s over N times the 1-rank samples/s;
  - efficiency against the ceiling: N-rank global samples/s over the N independent ranks';
  - the ratio of our global throughput to DDP's on the same MLP and batch;
  - the bandwidth of the bucketed gradient allreduce over that of one raw mpi4py Allreduce
    of the same number of bytes (bandwidth = bytes / time);
  - the fraction of the gradient allreduce time not hidden behind backward: time spent
    waiting for allreduces after backward ends, over the time the same allreduces take alone.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy

if __package__ in (None, ""):  # run as a script: make `examples.benchmarks` (and the packages) importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.benchmarks.workers import print_result, run_worker  # noqa: E402

LAYER_WIDTHS = (784, 1024, 1024, 10)
TARGETS = {"weak_scaling_efficiency": 0.90, "efficiency_against_independent": 0.95, "speedup_over_torch_ddp": 1.3,
           "allreduce_bandwidth_ratio": 0.9}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2, help="ranks of the data-parallel runs (default 2)")
    parser.add_argument("--batch", type=int, default=128, help="samples per rank per step (default 128)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them (default 5)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported (default 5)")
    parser.add_argument("--bucket-cap-mb", type=float, default=None, help="DataParallel bucket size (default: its own)")
    parser.add_argument("--compression", choices=["float16"], default=None, help="gradient compression")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch DDP comparison")
    parser.add_argument("--json", help="also write all measurements to this JSON file")
    parser.add_argument("--worker", choices=["numpy", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--mpi-allreduce", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--independent", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--init-file", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- workers: run under mpiexec, print one RESULT line on rank 0 -----------------------------------
def synthetic_batch(rank: int, batch: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    rng = numpy.random.default_rng(rank)
    x = rng.standard_normal((batch, LAYER_WIDTHS[0])).astype(numpy.float32)
    return x, rng.integers(0, LAYER_WIDTHS[-1], batch)


def numpy_worker(args: argparse.Namespace) -> None:
    from mpi4py import MPI

    import mpiprop.network as nn
    from mpiprop.distributed import DataParallel

    world = MPI.COMM_WORLD
    nn.manual_seed(0)
    layers = []
    for index, (fan_in, fan_out) in enumerate(zip(LAYER_WIDTHS[:-1], LAYER_WIDTHS[1:])):
        layers += [nn.Linear(fan_in, fan_out)] + ([nn.ReLU()] if index < len(LAYER_WIDTHS) - 2 else [])
    model = nn.Sequential(*layers)
    synchronised = world.size > 1 and not args.independent
    if synchronised:
        options = {} if args.bucket_cap_mb is None else {"bucket_cap_mb": args.bucket_cap_mb}
        model = DataParallel(model, compression=args.compression, shared_memory=not args.mpi_allreduce, **options)
    optimizer = nn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x, y = synthetic_batch(world.rank, args.batch)

    def step() -> None:
        optimizer.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward(), **({} if synchronised else {"input_grad": False}))
        optimizer.step()

    step_seconds, backward, waits = _time_steps(step, args, world, lambda: model.last_sync_stats if synchronised
                                                else None)
    result: dict[str, Any] = {"ranks": world.size, "step_s": step_seconds,
                              "samples_per_s": world.size * args.batch / step_seconds}
    if synchronised:
        result.update(_allreduce_comparison(model, world))
        result["wait_after_backward_s"] = statistics.median(waits)
        result["backward_s"] = statistics.median(backward)
        result["exposed_fraction"] = result["wait_after_backward_s"] / result["gradient_allreduce_s"]
        result["buckets"] = len(model.buckets)
        result["allreduce"] = model.allreduce_kind
    if world.rank == 0:
        print_result(result)


def _time_steps(step, args: argparse.Namespace, world, stats) -> tuple[float, list[float], list[float]]:
    from mpi4py import MPI

    for _ in range(args.warmup):
        step()
    world.Barrier()
    backward, waits = [], []
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
        if stats() is not None:
            backward.append(stats().backward_seconds)
            waits.append(stats().wait_seconds)
    elapsed = numpy.array([time.perf_counter() - started])
    world.Allreduce(MPI.IN_PLACE, elapsed, op=MPI.MAX)
    return float(elapsed[0]) / args.steps, backward, waits


def _allreduce_comparison(dp, world, repeats: int = 20) -> dict[str, float]:
    """Median time of the bucketed gradient allreduce alone, and of one raw Allreduce of the same bytes."""
    from mpi4py import MPI

    sync = dp.gradient_sync
    ready_order = [p for bucket in dp.buckets for p in bucket.params]
    total_bytes = sum(bucket.nbytes for bucket in dp.buckets)
    raw = numpy.ones(total_bytes // 4, dtype=numpy.float32)
    ours, theirs = [], []
    for _ in range(repeats):
        world.Barrier()
        started = time.perf_counter()
        sync.start()
        sync.mark_final(ready_order)
        sync.finish()
        ours.append(time.perf_counter() - started)
        world.Barrier()
        started = time.perf_counter()
        world.Allreduce(MPI.IN_PLACE, raw, op=MPI.SUM)
        theirs.append(time.perf_counter() - started)
    ours_s, theirs_s = statistics.median(ours), statistics.median(theirs)
    return {"gradient_bytes": total_bytes, "gradient_allreduce_s": ours_s, "raw_allreduce_s": theirs_s,
            "gradient_allreduce_gb_s": total_bytes / ours_s / 1e9, "raw_allreduce_gb_s": total_bytes / theirs_s / 1e9}


def torch_worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as torch_dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    rank, world_size = int(os.environ["PMI_RANK"]), int(os.environ["PMI_SIZE"])
    torch_dist.init_process_group("gloo", init_method=f"file://{args.init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(LAYER_WIDTHS[:-1], LAYER_WIDTHS[1:])):
        layers += [torch.nn.Linear(fan_in, fan_out)] + ([torch.nn.ReLU()] if index < len(LAYER_WIDTHS) - 2 else [])
    model = DistributedDataParallel(torch.nn.Sequential(*layers))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    x_np, y_np = synthetic_batch(rank, args.batch)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)

    def step() -> None:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    torch_dist.barrier()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    elapsed = torch.tensor([time.perf_counter() - started], dtype=torch.float64)
    torch_dist.all_reduce(elapsed, op=torch_dist.ReduceOp.MAX)
    step_seconds = float(elapsed[0]) / args.steps
    if rank == 0:
        print_result({"ranks": world_size, "step_s": step_seconds,
                      "samples_per_s": world_size * args.batch / step_seconds})
    torch_dist.destroy_process_group()


# --- driver -------------------------------------------------------------------------------------------
def launch(args: argparse.Namespace, worker: str, ranks: int, timeout: float = 600,
           variant: str | None = None) -> dict[str, Any]:
    """Run this file as `worker` under `mpiexec -n ranks` and return its RESULT record.

    `variant` is "mpi-allreduce" or "independent" for those numpy runs.
    """
    arguments = ["--worker", worker, "--batch", str(args.batch), "--steps", str(args.steps),
                 "--warmup", str(args.warmup)] + ([f"--{variant}"] if variant else [])
    if args.bucket_cap_mb is not None:
        arguments += ["--bucket-cap-mb", str(args.bucket_cap_mb)]
    if args.compression:
        arguments += ["--compression", args.compression]
    return run_worker(__file__, ranks, arguments, timeout=timeout, torch_init_file=worker == "torch")


def run_rounds(args: argparse.Namespace, with_torch: bool) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {"single": [], "independent": [], "data_parallel": [],
                                              "data_parallel_mpi": [], "torch_ddp": []}
    for round_number in range(args.rounds):
        runs["single"].append(launch(args, "numpy", 1))
        runs["independent"].append(launch(args, "numpy", args.ranks, variant="independent"))
        runs["data_parallel"].append(launch(args, "numpy", args.ranks))
        runs["data_parallel_mpi"].append(launch(args, "numpy", args.ranks, variant="mpi-allreduce"))
        if with_torch:
            runs["torch_ddp"].append(launch(args, "torch", args.ranks))
        print(f"round {round_number + 1}/{args.rounds}: " + ", ".join(
            f"{name} {records[-1]['samples_per_s']:.0f} samples/s" for name, records in runs.items() if records),
            flush=True)
    return runs


def summarise(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"ranks": args.ranks, "batch_per_rank": args.batch, "rounds": args.rounds,
                               "single_samples_per_s": statistics.median(r["samples_per_s"] for r in runs["single"]),
                               "independent_samples_per_s": statistics.median(
                                   r["samples_per_s"] for r in runs["independent"])}
    for name in ("data_parallel", "data_parallel_mpi"):
        summary[name] = summarise_data_parallel(args, runs, name)
    if runs["torch_ddp"]:
        summary["torch_ddp_samples_per_s"] = statistics.median(r["samples_per_s"] for r in runs["torch_ddp"])
    return summary


def summarise_data_parallel(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]],
                            name: str) -> dict[str, Any]:
    """Medians of one DataParallel variant's runs; ratios are taken round by round, then the median."""
    single, independent, parallel, torch_ddp = runs["single"], runs["independent"], runs[name], runs["torch_ddp"]

    def median(key: str) -> float:
        return statistics.median(record[key] for record in parallel)

    summary: dict[str, Any] = {
        "allreduce": parallel[0]["allreduce"], "buckets": parallel[0]["buckets"],
        "samples_per_s": median("samples_per_s"),
        "weak_scaling_efficiency": statistics.median(
            p["samples_per_s"] / (args.ranks * s["samples_per_s"]) for s, p in zip(single, parallel)),
        "efficiency_against_independent": statistics.median(
            p["samples_per_s"] / i["samples_per_s"] for i, p in zip(independent, parallel)),
        "gradient_allreduce_gb_s": median("gradient_allreduce_gb_s"),
        "raw_allreduce_gb_s": median("raw_allreduce_gb_s"),
        "allreduce_bandwidth_ratio": statistics.median(
            r["gradient_allreduce_gb_s"] / r["raw_allreduce_gb_s"] for r in parallel),
        "exposed_communication_fraction": median("exposed_fraction"),
        "wait_after_backward_ms": 1e3 * median("wait_after_backward_s"),
        "gradient_allreduce_ms": 1e3 * median("gradient_allreduce_s"),
    }
    if torch_ddp:
        summary["speedup_over_torch_ddp"] = statistics.median(
            p["samples_per_s"] / t["samples_per_s"] for p, t in zip(parallel, torch_ddp))
    return summary


def report(summary: dict[str, Any]) -> None:
    n = summary["ranks"]
    print(f"MLP {'-'.join(map(str, LAYER_WIDTHS))}, {summary['batch_per_rank']} samples per rank, one BLAS thread "
          f"per rank, median of {summary['rounds']} interleaved rounds")
    print(f"  1 rank:                    {summary['single_samples_per_s']:9.0f} samples/s")
    print(f"  {n} independent ranks:       {summary['independent_samples_per_s']:9.0f} samples/s (global, "
          "no communication: the ceiling)")
    if "torch_ddp_samples_per_s" in summary:
        print(f"  {n} ranks torch DDP gloo:   {summary['torch_ddp_samples_per_s']:9.0f} samples/s (global)")
    for name in ("data_parallel", "data_parallel_mpi"):
        variant = summary[name]
        print(f"  {n} ranks DataParallel, {variant['allreduce']} allreduce, {variant['buckets']} buckets:")
        print(f"    samples/s (global):      {variant['samples_per_s']:9.0f}")
        print(f"    weak-scaling efficiency: {variant['weak_scaling_efficiency']:9.3f}")
        print(f"    of the ceiling:          {variant['efficiency_against_independent']:9.3f}")
        if "speedup_over_torch_ddp" in variant:
            print(f"    speedup over torch DDP:  {variant['speedup_over_torch_ddp']:9.3f}x")
        print(f"    gradient allreduce:      {variant['gradient_allreduce_gb_s']:9.3f} GB/s "
              f"({variant['gradient_allreduce_ms']:.2f} ms)")
        print(f"    raw mpi4py Allreduce:    {variant['raw_allreduce_gb_s']:9.3f} GB/s")
        print(f"    bandwidth ratio:         {variant['allreduce_bandwidth_ratio']:9.3f}")
        print(f"    exposed communication:   {variant['exposed_communication_fraction']:9.3f} "
              f"({variant['wait_after_backward_ms']:.2f} ms waited after backward)")
    verdicts = [f"{name} >= {target}: {'met' if summary['data_parallel'][name] >= target else 'MISSED'}"
                for name, target in TARGETS.items() if name in summary["data_parallel"]]
    print("  targets (default DataParallel): " + "; ".join(verdicts))


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Run the benchmark (or, with --worker, one measurement under mpiexec); returns the summary."""
    args = parse_args(argv)
    if args.worker == "numpy":
        return numpy_worker(args)
    if args.worker == "torch":
        return torch_worker(args)
    with_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    if not with_torch and not args.no_torch:
        print("torch is not installed: the DDP comparison is skipped")
    summary = summarise(args, run_rounds(args, with_torch))
    report(summary)
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary}, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
