"""Build and close DataParallel, ZeRO, Pipeline and tensor-parallel groups many times: does a rank hold more as it goes?

    python examples/benchmarks/bench_close_cycles.py                    # 10,000 cycles on 2 ranks
    python examples/benchmarks/bench_close_cycles.py --cycles 2000 --every 200

The driver starts the worker with `mpiexec`. Each cycle builds one of them (in turn: DataParallel
with its buckets in shared memory, ZeRO-1 with the parameters handed over in shared memory, ZeRO-2
with shared gradient slots, a Pipeline of 2 stages, a tensor-parallel group), trains one step where
there is one, and closes it (half in a `with` block). Every `--every` cycles rank 0 measures this
process's resident memory and the bytes of /dev/shm mapped into it, and before the first cycle and
after the last how many communicators MPI can still make, counted by duplicating COMM_WORLD until
MPI refuses. The targets: resident memory grows by less than RSS_MARGIN from the first measurement
after a cycle to the last, /dev/shm stays the same, and so does the count of free communicators
(without `close()` a rank grew 17-26 MB per 100 objects and ran out of communicators after about 680).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy

if __package__ in (None, ""):  # run as a script: make `examples` (and the packages) importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import mpiprop.network as nn  # noqa: E402
from examples.benchmarks.workers import print_result, run_worker  # noqa: E402
from mpiprop.distributed import DataParallel, Pipeline, start, tensor_parallel_group  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
MOST_COMMUNICATORS = 4096
RSS_MARGIN = 12 * 2**20  # bytes; without close() a rank grew 17-26 MB per 100 objects


def model() -> nn.Sequential:
    nn.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def train_once(strategy, optimizer) -> None:
    x = numpy.ones((4, 16), dtype=numpy.float32)
    y = numpy.zeros((4, 4), dtype=numpy.float32)
    strategy.train_step(x, y, nn.MSELoss())
    optimizer.step()
    optimizer.zero_grad()


def data_parallel(cycle: int, zero: int) -> None:
    dp = DataParallel(model(), shard_optimizer_state=zero)
    optimizer = dp.optimizer(nn.optim.SGD, lr=0.1) if zero else nn.optim.SGD(dp.parameters(), lr=0.1)
    train_once(dp, optimizer)
    assert dp.allreduce_kind.startswith("shared memory"), dp.allreduce_kind  # a shared window to release
    dp.close()
    dp.close()  # again: nothing happens


def pipeline(cycle: int) -> None:
    with Pipeline(model(), micro_batches=2) as pipe:
        train_once(pipe, nn.optim.SGD(pipe.parameters(), lr=0.1))


def tensor_group(cycle: int) -> None:
    from mpiprop.distributed import size

    with tensor_parallel_group(size()) as group:
        group.allreduce(numpy.ones(3))


BUILDS = [lambda c: data_parallel(c, 0), lambda c: data_parallel(c, 1), lambda c: data_parallel(c, 2), pipeline,
          tensor_group]


def mapped_shared_memory_bytes() -> int:
    total = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/dev/shm/"):
                start, end = (int(value, 16) for value in fields[0].split("-"))
                total += end - start
    return total


def free_communicators() -> int:
    """How many more communicators MPI makes before it refuses (collective)."""
    from mpi4py import MPI

    made = []
    try:
        while len(made) < MOST_COMMUNICATORS:
            made.append(MPI.COMM_WORLD.Dup())
    except MPI.Exception:
        pass
    for comm in made:
        comm.Free()
    return len(made)


def measure(cycle: int, count_communicators: bool) -> dict[str, Any]:
    with open("/proc/self/statm") as statm:
        resident = int(statm.read().split()[1]) * PAGE
    return {"cycle": cycle, "rss_bytes": resident, "shm_bytes": mapped_shared_memory_bytes(),
            "free_communicators": free_communicators() if count_communicators else None}


def worker(cycles: int, every: int) -> None:
    """Under mpiexec: the cycles; rank 0 prints the measurements."""
    from mpiprop.distributed import rank

    start()  # the job's guards hold a communicator of their own for the whole run
    figures = [measure(0, count_communicators=True)]
    for cycle in range(cycles):
        BUILDS[cycle % len(BUILDS)](cycle)
        if (cycle + 1) % every == 0:
            figures.append(measure(cycle + 1, count_communicators=cycle + 1 == cycles))
    if rank() == 0:
        print_result(figures)


def verdicts(figures: list[dict[str, Any]]) -> dict[str, bool]:
    """Whether each target was met (see the module)."""
    first, last = figures[1], figures[-1]  # figures[0] precedes the first build
    return {"rss": last["rss_bytes"] - first["rss_bytes"] < RSS_MARGIN,
            "shm": {f["shm_bytes"] for f in figures[1:]} == {first["shm_bytes"]},
            "communicators": last["free_communicators"] == figures[0]["free_communicators"]}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10_000, help="builds and closes (default 10000)")
    parser.add_argument("--every", type=int, default=1000, help="cycles between measurements (default 1000)")
    parser.add_argument("--ranks", type=int, default=2, help="ranks (default 2)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before the job is stopped")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the cycles under mpiexec; print and return the measurements and the verdicts."""
    args = parse_args(argv)
    if args.worker:
        worker(args.cycles, args.every)
        return {}
    figures = run_worker(__file__, args.ranks, ["--worker", "--cycles", str(args.cycles), "--every", str(args.every)],
                         timeout=args.timeout)
    print(f"{'cycle':>7} {'RSS MB':>8} {'/dev/shm mapped MB':>19} {'free communicators':>19}")
    for f in figures:
        count = "" if f["free_communicators"] is None else str(f["free_communicators"])
        print(f"{f['cycle']:>7} {f['rss_bytes'] / 2**20:>8.1f} {f['shm_bytes'] / 2**20:>19.1f} {count:>19}")
    met = verdicts(figures)
    print("targets: " + "; ".join(f"{name} {'flat' if ok else 'GREW'}" for name, ok in met.items()))
    return {"figures": figures, "verdicts": met}


if __name__ == "__main__":
    main()
