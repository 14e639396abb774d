"""Per-step overhead of DataParallel on a tiny MLP, against a hand-written numpy + mpi4py loop doing the same math.

    python examples/benchmarks/bench_step_overhead.py                 # 2 ranks, 5 rounds
    python examples/benchmarks/bench_step_overhead.py --ranks 4 --rounds 3 --json overhead.json
    python examples/benchmarks/bench_step_overhead.py --widths 784-1024-1024-10 --batch 128 --steps 20

A tiny model (32-32-10, 16 samples per rank) makes the math cheap, so what a step costs beyond
it shows. Each job, under `mpiexec` with one BLAS thread per rank, times four loops in
interleaved blocks of steps within the same processes (the median block per loop, so that a
burst of load from elsewhere on the machine moves one block, not the figure; and the fastest
block, what a step costs when nothing else runs):
  - by hand: forward, cross-entropy, backward and SGD with momentum written in numpy;
  - by hand with allreduce: the same, plus one in-place MPI Allreduce of all the gradients
    (in one flat buffer) and their division by the number of ranks;
  - mpiprop local: the same model, loss and optimizer of mpiprop.network, no DataParallel;
  - mpiprop DataParallel: the same wrapped in DataParallel (shared-memory sums on one node).
It reports the median microseconds per step of each, and the overhead of data parallelism:
DataParallel minus mpiprop local, against by hand with allreduce minus by hand (the price of
one MPI Allreduce done by hand), from the median blocks and from the fastest ones; and the
DataParallel step's speed as a fraction of the local one's in the same processes (the same
ranks with no communication: bench_data_parallel's ceiling, here immune to load that comes
and goes between jobs, which makes `--widths 784-1024-1024-10 --batch 128` a steadier
measurement of that benchmark's ratio on a shared machine).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy

if __package__ in (None, ""):  # run as a script: make `examples.benchmarks` (and the packages) importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.benchmarks.workers import print_result, run_worker  # noqa: E402

LAYER_WIDTHS = (32, 32, 10)  # the default model; --widths 784-1024-1024-10 --batch 128 is bench_data_parallel's
LOOPS = ("by_hand", "by_hand_allreduce", "mpiprop_local", "mpiprop_data_parallel")
LEARNING_RATE, MOMENTUM = 0.01, 0.9


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2, help="ranks of each job (default 2)")
    parser.add_argument("--widths", type=_widths, default=LAYER_WIDTHS,
                        help="layer widths of the ReLU MLP, e.g. 784-1024-1024-10 (default 32-32-10)")
    parser.add_argument("--batch", type=int, default=16, help="samples per rank per step (default 16)")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per loop and block (default 200)")
    parser.add_argument("--blocks", type=int, default=15, help="interleaved blocks per job (default 15)")
    parser.add_argument("--rounds", type=int, default=5, help="jobs; medians over them are reported (default 5)")
    parser.add_argument("--json", help="also write all measurements to this JSON file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- the worker: run under mpiexec, prints one RESULT line on rank 0 ----------------------------------
def _widths(text: str) -> tuple[int, ...]:
    widths = tuple(int(width) for width in text.split("-"))
    if len(widths) < 2 or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"widths {text!r} must be two or more positive integers joined by '-', "
                                         "e.g. 784-1024-1024-10")
    return widths


def synthetic_batch(rank: int, batch: int, widths: Sequence[int] = LAYER_WIDTHS) -> tuple[numpy.ndarray, numpy.ndarray]:
    rng = numpy.random.default_rng(rank)
    x = rng.standard_normal((batch, widths[0])).astype(numpy.float32)
    return x, rng.integers(0, widths[-1], batch)


def hand_written_step(x: numpy.ndarray, y: numpy.ndarray, world: Any, synchronised: bool,
                      params: list[numpy.ndarray] | None = None,
                      widths: Sequence[int] = LAYER_WIDTHS) -> Callable[[], None]:
    """One SGD-with-momentum step of a ReLU MLP in numpy, with one MPI Allreduce of every gradient when `synchronised`.

    Args:
        params: weight and bias of each layer (updated in place); None for random ones.
    """
    from mpi4py import MPI

    shapes = list(zip(widths[:-1], widths[1:]))
    parameter_shapes = [shape for fan_in, fan_out in shapes for shape in ((fan_in, fan_out), (fan_out,))]
    sizes = [int(numpy.prod(shape)) for shape in parameter_shapes]
    flat_grads = numpy.zeros(sum(sizes), dtype=numpy.float32)  # the gradients are views of one buffer
    views = numpy.split(flat_grads, numpy.cumsum(sizes)[:-1])
    grads = [view.reshape(shape) for view, shape in zip(views, parameter_shapes)]
    if params is None:
        rng = numpy.random.default_rng(0)
        params = [rng.standard_normal(g.shape).astype(numpy.float32) * numpy.float32(0.1) for g in grads]
    velocities = [numpy.zeros_like(p) for p in params]
    one_hot = numpy.eye(widths[-1], dtype=numpy.float32)[y]
    scale = numpy.float32(1.0 / len(x))

    def step() -> None:
        activations, h = [x], x
        for layer in range(len(shapes)):
            h = h @ params[2 * layer] + params[2 * layer + 1]
            if layer < len(shapes) - 1:
                h = numpy.maximum(h, 0)
            activations.append(h)
        logits = activations[-1]
        exp = numpy.exp(logits - logits.max(axis=1, keepdims=True))
        dh = (exp / exp.sum(axis=1, keepdims=True) - one_hot) * scale
        for layer in range(len(shapes) - 1, -1, -1):
            numpy.matmul(activations[layer].T, dh, out=grads[2 * layer])
            dh.sum(axis=0, out=grads[2 * layer + 1])
            if layer > 0:
                dh = (dh @ params[2 * layer].T) * (activations[layer] > 0)
        if synchronised:
            world.Allreduce(MPI.IN_PLACE, flat_grads, op=MPI.SUM)
            numpy.multiply(flat_grads, numpy.float32(1.0 / world.size), out=flat_grads)
        for p, g, v in zip(params, grads, velocities):
            v *= numpy.float32(MOMENTUM)
            v += g
            p -= numpy.float32(LEARNING_RATE) * v

    return step


def mpiprop_step(x: numpy.ndarray, y: numpy.ndarray, data_parallel: bool,
                 widths: Sequence[int] = LAYER_WIDTHS) -> Callable[[], None]:
    """One step of the same model, loss and optimizer in mpiprop, wrapped in DataParallel when `data_parallel`."""
    import mpiprop.network as nn
    from mpiprop.distributed import DataParallel

    nn.manual_seed(0)
    layers: list[Any] = []
    for index, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [nn.Linear(fan_in, fan_out)] + ([nn.ReLU()] if index < len(widths) - 2 else [])
    model: Any = nn.Sequential(*layers)
    if data_parallel:
        model = DataParallel(model)
    optimizer = nn.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward(), **({} if data_parallel else {"input_grad": False}))
        optimizer.step()

    return step


def worker(args: argparse.Namespace) -> None:
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    x, y = synthetic_batch(world.rank, args.batch, args.widths)
    steps = {"by_hand": hand_written_step(x, y, world, synchronised=False, widths=args.widths),
             "by_hand_allreduce": hand_written_step(x, y, world, synchronised=True, widths=args.widths),
             "mpiprop_local": mpiprop_step(x, y, data_parallel=False, widths=args.widths),
             "mpiprop_data_parallel": mpiprop_step(x, y, data_parallel=True, widths=args.widths)}
    for step in steps.values():  # warm up
        for _ in range(max(1, args.steps // 10)):
            step()
    blocks: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.blocks):
        for name, step in steps.items():
            blocks[name].append(_microseconds_per_step(step, args.steps, world))
    if world.rank == 0:
        print_result({**{name: statistics.median(times) for name, times in blocks.items()},
                      **{f"{name}_fastest": min(times) for name, times in blocks.items()}})


def _microseconds_per_step(step: Callable[[], None], steps: int, world) -> float:
    """The slowest rank's mean microseconds per step over `steps` steps."""
    from mpi4py import MPI

    world.Barrier()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = numpy.array([time.perf_counter() - started])
    world.Allreduce(MPI.IN_PLACE, elapsed, op=MPI.MAX)
    return 1e6 * float(elapsed[0]) / steps


# --- the driver -----------------------------------------------------------------------------------------
def summarise(args: argparse.Namespace, rounds: list[dict[str, float]]) -> dict[str, Any]:
    """Medians per loop, and the overheads taken round by round, then their median and range."""
    summary: dict[str, Any] = {"widths": list(args.widths), "ranks": args.ranks, "batch_per_rank": args.batch,
                               "rounds": len(rounds), "steps": args.steps, "blocks": args.blocks}
    for blocks, suffix in (("median", ""), ("fastest", "_fastest")):
        overheads = [r[f"mpiprop_data_parallel{suffix}"] - r[f"mpiprop_local{suffix}"] for r in rounds]
        allreduces = [r[f"by_hand_allreduce{suffix}"] - r[f"by_hand{suffix}"] for r in rounds]
        for loop in LOOPS:
            summary[f"{loop}{suffix}_us"] = statistics.median(r[f"{loop}{suffix}"] for r in rounds)
        summary.update({f"data_parallel_overhead{suffix}_us": statistics.median(overheads),
                        f"data_parallel_overhead{suffix}_range_us": [min(overheads), max(overheads)],
                        f"hand_allreduce{suffix}_us": statistics.median(allreduces),
                        f"hand_allreduce{suffix}_range_us": [min(allreduces), max(allreduces)]})
    summary["data_parallel_of_local"] = statistics.median(r["mpiprop_local"] / r["mpiprop_data_parallel"]
                                                          for r in rounds)
    return summary


def report(summary: dict[str, Any]) -> None:
    print(f"MLP {'-'.join(map(str, summary['widths']))}, {summary['batch_per_rank']} samples per rank, "
          f"{summary['ranks']} ranks, one BLAS thread per rank, median of {summary['rounds']} jobs' median "
          f"blocks of {summary['steps']} steps (microseconds per step)")
    print(f"  {'':24s} {'median':>8s} {'fastest':>8s}")
    for loop in LOOPS:
        print(f"  {loop.replace('_', ' '):24s} {summary[f'{loop}_us']:8.1f} {summary[f'{loop}_fastest_us']:8.1f}")
    for key, label in (("data_parallel_overhead", "data-parallel overhead (DataParallel - local)"),
                       ("hand_allreduce", "one Allreduce by hand (with - without)       ")):
        ranges = [summary[f"{key}{suffix}_range_us"] for suffix in ("", "_fastest")]
        print(f"  {label}: {summary[f'{key}_us']:7.1f} (rounds {ranges[0][0]:.1f} to {ranges[0][1]:.1f}), "
              f"fastest blocks {summary[f'{key}_fastest_us']:.1f} (rounds {ranges[1][0]:.1f} to {ranges[1][1]:.1f})")
    print(f"  DataParallel's speed over local's (the ceiling): {summary['data_parallel_of_local']:.3f}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Run the benchmark (or, with --worker, one job's measurements under mpiexec); returns the summary."""
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    rounds = []
    for round_number in range(args.rounds):
        rounds.append(run_worker(__file__, args.ranks, ["--worker", "--widths", "-".join(map(str, args.widths)),
                                                        "--batch", str(args.batch), "--steps",
                                                        str(args.steps), "--blocks", str(args.blocks)], timeout=600))
        print(f"round {round_number + 1}/{args.rounds}: " + ", ".join(
            f"{loop} {rounds[-1][loop]:.1f} us" for loop in LOOPS), flush=True)
    summary = summarise(args, rounds)
    report(summary)
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "rounds": rounds}, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
