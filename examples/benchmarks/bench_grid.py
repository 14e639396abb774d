"""The 2-D grid: 2 pipeline stages x 2 replicas against a 2-stage pipeline and 4-rank DataParallel, in one run.

    python examples/benchmarks/bench_grid.py                      # 3 interleaved rounds
    python examples/benchmarks/bench_grid.py --rounds 5 --json grid.json

Model: MLP 784 -> six hidden layers of --width (default 1024, ReLU) -> 10, softmax cross-entropy,
SGD with momentum, float32; global batch 256, one BLAS thread per rank. The driver starts every
measurement itself with `mpiexec`, in interleaved rounds:
  - "data": DataParallel over 4 ranks, 64 samples each;
  - "pipeline": a 2-stage 1F1B pipeline on 2 ranks, the batch in 8 micro-batches;
  - "grid": `Pipeline(model, 4, stages=2)` on 4 ranks, 2 replicas of 128 samples in 4 micro-batches.
All start from the same weights and batch; their first-step losses are compared before the
timings are trusted. Reported: medians over rounds of samples/s, the grid against each of the
others, and how the grid's gradient sync overlaps backward: the share of the buckets whose
reduction started before the stage's backward ended, and the time waited for reductions after it
(median over steps, per rank), against the same wait in DataParallel. 4 ranks need 4 cores to say
anything about speed; on fewer the ranks take turns.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy

if __package__ in (None, ""):  # run as a script: make `examples.benchmarks` (and the packages) importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.benchmarks.bench_pipeline import CLASSES, HIDDEN_LAYERS, INPUTS, build_model, synthetic_batch  # noqa: E402
from examples.benchmarks.workers import print_result, run_worker  # noqa: E402

BATCH = 256
LOSS_TOLERANCE = 1e-4
CONTESTANTS = (("data", 4), ("pipeline", 2), ("grid", 4))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024, help="hidden width (default 1024)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported (default 3)")
    parser.add_argument("--json", help="also write all measurements to this JSON file")
    parser.add_argument("--worker", choices=[name for name, _ in CONTESTANTS], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- the worker: runs under mpiexec; rank 0 prints one RESULT line --------------------------------
def worker(args: argparse.Namespace) -> None:
    from mpi4py import MPI

    import mpiprop.network as nn
    from mpiprop.distributed import DataParallel, Pipeline

    world = MPI.COMM_WORLD
    if args.worker == "data":
        strategy = DataParallel(build_model(args.width))
    else:
        micro_batches = 8 if args.worker == "pipeline" else 4
        strategy = Pipeline(build_model(args.width), micro_batches, "1f1b", stages=2)
    shard, shards = strategy.data_shard
    rows = slice(shard * BATCH // shards, (shard + 1) * BATCH // shards)
    x, y = (part[rows] for part in synthetic_batch(BATCH))
    optimizer = nn.optim.SGD(strategy.parameters(), lr=0.01, momentum=0.9)
    sync = strategy.gradient_sync
    overlap: list[tuple[float, float]] = []

    def step() -> float:
        optimizer.zero_grad()
        loss = strategy.train_step(x, y, nn.CrossEntropyLoss())
        optimizer.step()
        return loss

    first_loss = step()
    for _ in range(args.warmup - 1):
        step()
    world.Barrier()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
        if sync is not None:
            overlap.append(_overlap_of(sync))
    world.Barrier()
    seconds = (time.perf_counter() - started) / args.steps
    losses = world.allgather(first_loss)
    per_rank = world.allgather({"launched_early": statistics.median(early for early, _ in overlap) if overlap else None,
                                "wait_ms": statistics.median(wait for _, wait in overlap) if overlap else None})
    if world.rank == 0:
        print_result({"first_loss": float(numpy.mean(losses)), "samples_per_s": BATCH / seconds, "ranks": per_rank})


def _overlap_of(sync) -> tuple[float, float]:
    """(share of the last step's buckets launched before backward ended, ms waited for reductions after it)."""
    stats = sync.last_stats
    return stats.launched_during_backward / max(stats.buckets, 1), 1e3 * stats.wait_seconds


# --- driver ----------------------------------------------------------------------------------------------
def run_rounds(args: argparse.Namespace) -> dict[str, list[Any]]:
    runs: dict[str, list[Any]] = {name: [] for name, _ in CONTESTANTS}
    arguments = ["--width", str(args.width), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    for round_number in range(args.rounds):
        shift = round_number % len(CONTESTANTS)
        for name, ranks in CONTESTANTS[shift:] + CONTESTANTS[:shift]:
            runs[name].append(run_worker(__file__, ranks, ["--worker", name, *arguments], timeout=900))
        print(f"round {round_number + 1}/{args.rounds}: " +
              ", ".join(f"{name} {runs[name][-1]['samples_per_s']:.0f}" for name, _ in CONTESTANTS) + " samples/s",
              flush=True)
    return runs


def check_same_losses(runs: dict[str, list[Any]]) -> None:
    """Every contestant computed the same first step (each reports the mean of its ranks' losses, which is the
    batch's loss for data parallelism and for pipelines alike).

    Raises:
        RuntimeError: naming the contestant whose first loss differs.
    """
    expected = runs["pipeline"][0]["first_loss"]
    for name in runs:
        loss = runs[name][0]["first_loss"]
        if not abs(loss - expected) <= LOSS_TOLERANCE:
            raise RuntimeError(f"{name} computed a first loss of {loss}, the pipeline {expected}; timings are void")


def summarise(runs: dict[str, list[Any]]) -> dict[str, Any]:
    speed = {name: statistics.median(record["samples_per_s"] for record in records) for name, records in runs.items()}
    ratio = {other: statistics.median(g["samples_per_s"] / o["samples_per_s"] for g, o in zip(runs["grid"], runs[other]))
             for other in ("pipeline", "data")}

    def per_rank(name: str, key: str) -> list[float]:
        return [statistics.median(record["ranks"][rank][key] for record in runs[name])
                for rank in range(len(runs[name][0]["ranks"]))]

    return {"samples_per_s": speed, "grid_over_pipeline": ratio["pipeline"], "grid_over_data": ratio["data"],
            "grid_launched_early": per_rank("grid", "launched_early"), "grid_wait_ms": per_rank("grid", "wait_ms"),
            "data_wait_ms": per_rank("data", "wait_ms"), "rounds": len(runs["grid"])}


def report(summary: dict[str, Any], width: int) -> None:
    speed = summary["samples_per_s"]
    print(f"MLP {INPUTS}-{HIDDEN_LAYERS}x{width}-{CLASSES}, global batch {BATCH}, one BLAS thread per rank, "
          f"median of {summary['rounds']} interleaved rounds")
    print(f"  DataParallel, 4 ranks:              {speed['data']:8.0f} samples/s")
    print(f"  pipeline, 2 stages (1f1b):          {speed['pipeline']:8.0f} samples/s")
    print(f"  grid, 2 stages x 2 replicas:        {speed['grid']:8.0f} samples/s  "
          f"{summary['grid_over_pipeline']:.2f}x the pipeline, {summary['grid_over_data']:.2f}x DataParallel")
    early = ", ".join(f"{share:.2f}" for share in summary["grid_launched_early"])
    print(f"  grid's buckets launched before its stage's backward ended, per rank: [{early}]")
    print("  waited for reductions after backward, ms per step per rank: grid [" +
          ", ".join(f"{ms:.2f}" for ms in summary["grid_wait_ms"]) + "], DataParallel [" +
          ", ".join(f"{ms:.2f}" for ms in summary["data_wait_ms"]) + "]")


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Run the benchmark (or, with --worker, one measurement under mpiexec); returns the summary."""
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    runs = run_rounds(args)
    check_same_losses(runs)
    summary = summarise(runs)
    report(summary, args.width)
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "runs": runs}, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
