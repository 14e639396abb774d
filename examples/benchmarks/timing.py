"""Side-by-side timing for benchmarks: pinned BLAS threads, interleaved rounds, medians.

Import this module before numpy and call `pin_threads()` first, so the thread
variables reach the BLAS libraries when they load; threadpoolctl, when it is
installed, also limits libraries that are already loaded. Nothing here imports numpy.

Run a benchmark from the repository root either way:
``python examples/benchmarks/bench_x.py`` or ``python -m examples.benchmarks.bench_x``.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def pin_threads(count: int = 1) -> None:
    """Limit BLAS and OpenMP to `count` threads in this process.

    Sets the usual thread variables (effective for libraries not loaded yet) and, when
    threadpoolctl is installed, limits the thread pools of libraries already loaded.

    Args:
        count: number of threads, at least 1.

    Raises:
        ValueError: when `count` is below 1.
    """
    if count < 1:
        raise ValueError(f"thread count must be at least 1, got {count}")
    for name in THREAD_VARIABLES:
        os.environ[name] = str(count)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(count)


def thread_pools() -> list[str]:
    """One line per BLAS/OpenMP library loaded in this process (name, version, threads), via threadpoolctl.

    Returns an empty list when threadpoolctl is not installed.
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [
        f"{pool.get('internal_api')} {pool.get('version')} ({pool.get('architecture', '?')}), "
        f"{pool.get('num_threads')} thread(s): {pool.get('filepath')}"
        for pool in threadpool_info()
    ]


def time_interleaved(contestants: dict[str, Callable[[], object]], rounds: int,
                     warmup_rounds: int = 1) -> dict[str, list[float]]:
    """Time each contestant once per round, all of them in every round, and return the seconds.

    Rounds interleave the contestants (A B C, B C A, C A B, ...: the order rotates so none
    always runs first), so a slow spell on a shared machine hits all of them alike.
    Compare the medians (`medians`), not the means.

    Args:
        contestants: name -> a callable doing one round of work.
        rounds: timed rounds, at least 1.
        warmup_rounds: untimed rounds run first.

    Returns:
        name -> list of `rounds` durations in seconds.

    Raises:
        ValueError: when there is no contestant or `rounds` is below 1.
    """
    if not contestants:
        raise ValueError("time_interleaved needs at least one contestant")
    if rounds < 1 or warmup_rounds < 0:
        raise ValueError(f"need rounds >= 1 and warmup_rounds >= 0, got rounds={rounds}, warmup_rounds={warmup_rounds}")
    names = list(contestants)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup_rounds + rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            contestants[name]()
            elapsed = time.perf_counter() - start
            if round_index >= warmup_rounds:
                seconds[name].append(elapsed)
    return seconds


def medians(seconds: dict[str, list[float]]) -> dict[str, float]:
    """name -> median of its durations."""
    return {name: statistics.median(values) for name, values in seconds.items()}
