"""Memory per rank and throughput: DataParallel against ZeRO-1, ZeRO-2 and tensor parallelism over the same ranks.

    python examples/benchmarks/bench_memory.py                      # 4 ranks, 3 interleaved rounds
    python examples/benchmarks/bench_memory.py --hidden 1024 --rounds 5 --json memory.json

The driver starts every run itself with `mpiexec` (one BLAS thread per rank), alternating
DataParallel (the whole model on every rank, the global batch split over the ranks), ZeRO-1 and
ZeRO-2 (DataParallel with Adam's state sharded over the ranks, and for ZeRO-2 the gradients
reduce-scattered) and tensor parallelism (every block's two Linear layers split column -> row
over all ranks, every rank on the whole batch), each running `examples/memory_report.py` on the
same global batch. It prints each rank's bytes of parameters, gradients, Adam state and peak
activations from the first run, the median global throughput over the rounds, and whether the
targets were met: ZeRO-1 holds at most 1/N of DataParallel's optimizer state per rank plus 5%
(N ranks); ZeRO-2 at most 1/N of its gradient memory per rank plus 5% between steps, and, at
its peak in backward (its gradients and its peak beyond DataParallel's, the shared slots of its whole
buckets included), at most that plus the whole buckets in flight (three, from the memory model);
tensor parallelism at most 0.3 of its parameter memory per rank; and each layout reaches at least
0.7 of DataParallel's throughput.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make `examples` (and the packages) importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.benchmarks.workers import print_result, run_worker  # noqa: E402

LAYOUTS = ("data", "zero1", "zero2", "tensor")
PARAMETER_MEMORY_TARGET = 0.3  # tensor parallel / DataParallel, parameter bytes per rank
SHARD_MARGIN = 1.05  # ZeRO / DataParallel, optimizer state (ZeRO-1) or gradients (ZeRO-2) per rank, times the ranks
THROUGHPUT_TARGET = 0.7  # each layout / DataParallel


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=4, help="ranks of every layout (default 4)")
    parser.add_argument("--hidden", type=int, default=512, help="block width H; blocks are H -> 4H -> H (default 512)")
    parser.add_argument("--blocks", type=int, default=4, help="number of blocks (default 4)")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch per step (default 64)")
    parser.add_argument("--steps", type=int, default=10, help="steps per run; all but the first timed (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported (default 3)")
    parser.add_argument("--json", help="also write all measurements to this JSON file")
    parser.add_argument("--worker", choices=LAYOUTS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def model_arguments(args: argparse.Namespace) -> list[str]:
    """The sizes, as both this file and `examples/memory_report.py` read them."""
    return ["--hidden", str(args.hidden), "--blocks", str(args.blocks), "--batch-size", str(args.batch_size),
            "--steps", str(args.steps)]


def worker(args: argparse.Namespace) -> None:
    """Under mpiexec: run the example in one layout; rank 0 prints every rank's report and the throughput."""
    from examples.memory_report import main as run_example
    from mpiprop import distributed

    reports, throughput = run_example(["--layout", args.worker, *model_arguments(args)])
    if distributed.is_main_rank():
        print_result({"reports": [vars(report) for report in reports], "samples_per_s": throughput})


def in_flight_bytes(args: argparse.Namespace) -> int:
    """Bytes of the whole gradient buckets a ZeRO-2 rank holds at once in backward, by the memory model."""
    from mpiprop.launch.memory_model import (ModelDescription, ParallelLayout, parameters_in_final_order,
                                             reduce_scattering_bytes)

    model = ModelDescription((args.hidden, 4 * args.hidden) * args.blocks + (args.hidden,))
    sizes = parameters_in_final_order(model, range(model.linear_count), 1)
    return reduce_scattering_bytes(model, sizes, ParallelLayout(args.ranks, zero=2))


def run_rounds(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {layout: [] for layout in LAYOUTS}
    for round_number in range(args.rounds):
        for layout in LAYOUTS:
            runs[layout].append(run_worker(__file__, args.ranks, ["--worker", layout, *model_arguments(args)],
                                           timeout=600))
        print(f"round {round_number + 1}/{args.rounds}: " + ", ".join(
            f"{layout} {records[-1]['samples_per_s']:.0f} samples/s" for layout, records in runs.items()), flush=True)
    return runs


def summarise(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per-rank bytes from the first round, median throughputs, and the ratios the targets are about."""
    summary: dict[str, Any] = {"ranks": args.ranks, "hidden": args.hidden, "blocks": args.blocks,
                               "batch_size": args.batch_size, "rounds": args.rounds}
    for layout in LAYOUTS:
        summary[layout] = {"reports": runs[layout][0]["reports"],
                           "samples_per_s": statistics.median(r["samples_per_s"] for r in runs[layout])}
    largest = {(layout, kind): max(r[kind] for r in summary[layout]["reports"])
               for layout in LAYOUTS for kind in ("parameters", "gradients", "optimizer_state")}
    summary["parameter_memory_ratio"] = largest["tensor", "parameters"] / largest["data", "parameters"]
    summary["optimizer_state_ratio"] = largest["zero1", "optimizer_state"] / largest["data", "optimizer_state"]
    summary["gradient_memory_ratio"] = largest["zero2", "gradients"] / largest["data", "gradients"]
    summary["backward_gradient_ratio"] = max(
        zero2["gradients"] + max(zero2["peak_activations"] - data["peak_activations"], 0)
        for zero2, data in zip(summary["zero2"]["reports"], summary["data"]["reports"])) / largest["data", "gradients"]
    summary["in_flight_ratio"] = in_flight_bytes(args) / largest["data", "gradients"]
    summary["throughput_ratio"] = {layout: statistics.median(
        other["samples_per_s"] / data["samples_per_s"] for data, other in zip(runs["data"], runs[layout]))
        for layout in LAYOUTS[1:]}
    return summary


def target_verdicts(summary: dict[str, Any]) -> str:
    """Each target, its measured ratio and whether it was met."""
    shard_target = SHARD_MARGIN / summary["ranks"]
    checks = [("zero1 optimizer_state_ratio", summary["optimizer_state_ratio"], "<=", shard_target),
              ("zero2 gradient_memory_ratio", summary["gradient_memory_ratio"], "<=", shard_target),
              ("zero2 backward_gradient_ratio", summary["backward_gradient_ratio"], "<=",
               shard_target + summary["in_flight_ratio"]),
              ("tensor parameter_memory_ratio", summary["parameter_memory_ratio"], "<=", PARAMETER_MEMORY_TARGET)]
    checks += [(f"{layout} throughput_ratio", ratio, ">=", THROUGHPUT_TARGET)
               for layout, ratio in summary["throughput_ratio"].items()]
    verdicts = []
    for name, value, relation, target in checks:
        met = value <= target if relation == "<=" else value >= target
        verdicts.append(f"{name} {value:.3f} {relation} {target:.4g}: {'met' if met else 'MISSED'}")
    return "; ".join(verdicts)


def report(summary: dict[str, Any]) -> None:
    hidden = summary["hidden"]
    print(f"{summary['blocks']} blocks {hidden} -> {4 * hidden} -> {hidden}, global batch {summary['batch_size']}, "
          f"{summary['ranks']} ranks, Adam, median of {summary['rounds']} interleaved rounds")
    for layout in LAYOUTS:
        print(f"  {layout}: {summary[layout]['samples_per_s']:.0f} samples/s (global)")
        print(f"    {'rank':>4} {'params MB':>10} {'grads MB':>9} {'Adam MB':>8} {'peak act MB':>12}")
        for rank, r in enumerate(summary[layout]["reports"]):
            print(f"    {rank:>4} {r['parameters'] / 1e6:>10.3f} {r['gradients'] / 1e6:>9.3f} "
                  f"{r['optimizer_state'] / 1e6:>8.3f} {r['peak_activations'] / 1e6:>12.3f}")
    print("  targets: " + target_verdicts(summary))


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Run the benchmark (or, with --worker, one run under mpiexec); returns the summary."""
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    summary = summarise(args, run_rounds(args))
    report(summary)
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary}, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
