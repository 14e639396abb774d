"""Measure point-to-point and allreduce latency and bandwidth under MPI (run with `mpiexec -n 2` or more)."""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable, Sequence

import numpy

from mpiprop.launch.perfmodel import LinkCost, fit_link, fit_ring_allreduce

MEASURE_TAG = "MPIPROP_LINKS"
DEFAULT_SIZES = (8, 4096, 65536, 1 << 20, 4 << 20)


def time_ping_pong(comm, nbytes: int, repeats: int) -> float:
    """Median one-way time of an `nbytes` message between ranks 0 and 1 (half a round trip); other ranks idle."""
    buffer = numpy.zeros(max(nbytes // 4, 1), dtype=numpy.float32)
    samples = []
    for _ in range(repeats):
        comm.barrier()
        start = time.perf_counter()
        if comm.rank == 0:
            comm.send(buffer, 1)
            comm.recv(buffer, 1)
        elif comm.rank == 1:
            comm.recv(buffer, 0)
            comm.send(buffer, 0)
        samples.append((time.perf_counter() - start) / 2)
    return statistics.median(samples[1:] or samples)  # the first repeat pays for connection setup


def time_allreduce(comm, nbytes: int, repeats: int) -> float:
    """Median time of an in-place sum allreduce of `nbytes` over all ranks (the slowest rank's time each repeat)."""
    buffer = numpy.ones(max(nbytes // 4, 1), dtype=numpy.float32)
    samples = []
    for _ in range(repeats):
        comm.barrier()
        start = time.perf_counter()
        comm.allreduce(buffer)
        samples.append(max(comm.allgather_object(time.perf_counter() - start)))
    return statistics.median(samples[1:] or samples)  # the first repeat pays for connection setup


def measure_links(comm, sizes: tuple[int, ...] = DEFAULT_SIZES, repeats: int = 10) -> dict[str, LinkCost]:
    """Fit alpha-beta costs of point-to-point messages and of the ring allreduce on `comm` (2 ranks or more).

    Raises:
        ValueError: on a single rank, where there is nothing to measure.
    """
    if comm.size < 2:
        raise ValueError(f"measuring links needs at least 2 ranks, got {comm.size}; run under `mpiexec -n 2`")
    p2p_times = [time_ping_pong(comm, size, repeats) for size in sizes]
    allreduce_times = [time_allreduce(comm, size, repeats) for size in sizes]
    return {"p2p": fit_or_estimate(sizes, p2p_times, lambda: fit_link(sizes, p2p_times)),
            "allreduce": fit_or_estimate([size * 2 * (comm.size - 1) / comm.size for size in sizes], allreduce_times,
                                         lambda: fit_ring_allreduce(sizes, allreduce_times, comm.size),
                                         latency_steps=2 * (comm.size - 1))}


def fit_or_estimate(nbytes: Sequence[float], seconds: Sequence[float], fit: Callable[[], LinkCost],
                    latency_steps: int = 1) -> LinkCost:
    """The least-squares `fit()`, or, when noise defeats it, a two-point estimate from the smallest and
    largest messages (latency from the smallest, bandwidth from the difference)."""
    try:
        return fit()
    except ValueError:
        latency = seconds[0] / latency_steps
        extra = seconds[-1] - seconds[0]
        bandwidth = (nbytes[-1] - nbytes[0]) / extra if extra > 0 else nbytes[-1] / seconds[-1]
        return LinkCost(latency_s=latency, bandwidth_bytes_per_s=bandwidth)


def main(argv: list[str] | None = None) -> None:
    """Print one line `MPIPROP_LINKS {json}` on rank 0 with the fitted p2p and allreduce link costs."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    from mpiprop.distributed import Communicator, start

    start()
    comm = Communicator()
    links = measure_links(comm, repeats=args.repeats)
    if comm.rank == 0:
        payload = {name: {"latency_s": link.latency_s, "bandwidth_bytes_per_s": link.bandwidth_bytes_per_s}
                   for name, link in links.items()}
        print(f"{MEASURE_TAG} {json.dumps(payload)}", flush=True)


if __name__ == "__main__":
    main()
