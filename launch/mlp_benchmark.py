"""The built-in scaling workload: data-parallel MLP training on synthetic data, printing its throughput line."""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import numpy

import mpiprop.network as nn
from mpiprop.launch.throughput import NO_COMMUNICATION_VARIABLE, SCALE_MODE_VARIABLE, format_throughput_line

MODES = ("strong", "weak")


def build_parser() -> argparse.ArgumentParser:
    """Options of the benchmark (all sizes small enough for a laptop by default)."""
    parser = argparse.ArgumentParser(prog="python -m mpiprop.launch.mlp_benchmark", description=__doc__)
    parser.add_argument("--mode", choices=MODES, default=os.environ.get(SCALE_MODE_VARIABLE, "strong"),
                        help="strong: --batch is the global batch, split over ranks; weak: --batch per rank "
                             f"(default: ${SCALE_MODE_VARIABLE}, set by `mpiprop scale`, else strong)")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=3, help="hidden layers")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--no-communication", action="store_true",
                        default=os.environ.get(NO_COMMUNICATION_VARIABLE) == "1",
                        help="every rank trains alone, without averaging gradients: the throughput ranks reach "
                             "when they only share the node (default: on when "
                             f"${NO_COMMUNICATION_VARIABLE}=1, set by `mpiprop scale --predict`)")
    return parser


def build_mlp(features: int, hidden: int, layers: int, classes: int) -> nn.Sequential:
    """Linear-ReLU blocks of width `hidden`, then a Linear to `classes` logits."""
    blocks: list[nn.Layer] = []
    width = features
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*blocks, nn.Linear(width, classes))


def local_batch_size(mode: str, batch: int, ranks: int) -> int:
    """Samples per rank per step: `batch / ranks` in strong scaling, `batch` in weak scaling.

    Raises:
        ValueError: when a strong-scaling batch does not split evenly over the ranks.
    """
    if mode == "weak":
        return batch
    if batch % ranks:
        raise ValueError(f"strong scaling splits the global batch {batch} over {ranks} ranks, which does not "
                         f"divide it; choose a --batch divisible by every rank count")
    return batch // ranks


def time_steps(step, count: int) -> list[float]:
    """Durations of `count` calls of `step()`."""
    durations = []
    for _ in range(count):
        start = time.perf_counter()
        step()
        durations.append(time.perf_counter() - start)
    return durations


def training_step(model, optimizer: nn.optim.Optimizer, loss_fn: nn.Loss, x, y) -> None:
    """One optimizer step of `model` (a Sequential, or a DataParallel that also averages gradients)."""
    optimizer.zero_grad()
    loss_fn(model(x), y)
    model.backward(loss_fn.backward(), input_grad=False)
    optimizer.step()


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train for the asked steps and print (on rank 0) the `MPIPROP_THROUGHPUT` line; returns its values.

    Local steps (no communication) are timed first for `compute_s_per_sample`, then DataParallel
    steps for the throughput; with `--no-communication` the timed steps stay local (`communication=0`).
    """
    args = build_parser().parse_args(argv)
    from mpiprop.distributed import Communicator, DataParallel, start

    start()
    comm = Communicator()
    batch = local_batch_size(args.mode, args.batch, comm.size)
    nn.manual_seed(0)
    model = build_mlp(args.features, args.hidden, args.layers, args.classes)
    optimizer, loss_fn = nn.optim.SGD(model.parameters(), lr=0.01), nn.CrossEntropyLoss()
    data = numpy.random.default_rng(comm.rank)
    x = data.standard_normal((batch, args.features), dtype=numpy.float32)
    y = data.integers(0, args.classes, size=batch)

    def local_step() -> None:
        training_step(model, optimizer, loss_fn, x, y)

    time_steps(local_step, max(args.warmup, 1))
    compute_s = statistics.median(time_steps(local_step, max(args.steps // 4, 2)))
    timed_step = local_step
    if not args.no_communication:
        parallel = DataParallel(model, comm=comm)  # after the local steps: it re-synchronises the replicas
        timed_step = functools.partial(training_step, parallel, optimizer, loss_fn, x, y)
        time_steps(timed_step, args.warmup)
    elapsed = slowest_rank_seconds(comm, timed_step, args.steps)
    values = {
        "samples_per_s": batch * comm.size * args.steps / elapsed,
        "step_s": elapsed / args.steps,
        "ranks": comm.size,
        "global_batch": batch * comm.size,
        "compute_s_per_sample": statistics.median(comm.allgather_object(compute_s / batch)),
        "parameter_bytes": sum(p.data.nbytes for p in model.parameters()),
        "activation_bytes_per_sample": args.hidden * numpy.dtype(numpy.float32).itemsize,
    }
    if args.no_communication:
        values["communication"] = 0
    if comm.rank == 0:
        print(format_throughput_line(**values), flush=True)
    return values


def slowest_rank_seconds(comm, step, count: int) -> float:
    """Seconds the slowest rank takes for `count` calls of `step()`, all ranks starting together."""
    comm.barrier()
    start = time.perf_counter()
    time_steps(step, count)
    return max(comm.allgather_object(time.perf_counter() - start))


if __name__ == "__main__":
    main()
