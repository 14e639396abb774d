"""BLAS threads for one process: one thread for small products, several only for large ones that measure faster.

A BLAS left to its default starts a thread per core for every product above a few thousand
multiply-adds. For the products of a small network that costs more than it gains (the threads
wait on each other, and numpy's and scipy's OpenBLAS each keep a pool), and on a machine whose
cores are busy it costs far more: an MLP on digits trained 6 to 15 times slower than with
OMP_NUM_THREADS=1. So unless the user chose a count, the first product sets every BLAS pool
loaded to one thread; a product of at least LARGE_PRODUCT multiply-adds is timed with one
thread and with every core, TRIALS times each, and then uses whichever was clearly faster
(one thread unless several took at most FASTER of its time), choosing again every
CHOOSE_AGAIN_AFTER large products. Nothing happens at import: the policy starts at the first
product (see `run_product`).
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable, MutableMapping, TypeVar

Result = TypeVar("Result")

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
OWN_VARIABLE = "MPIPROP_THREADS"  # BLAS threads for every product, read by mpiprop only
LARGE_PRODUCT = 1 << 24  # multiply-adds (256 x 256 x 256): below this one thread is as fast as several
TRIALS = 3  # large products timed with each thread count before one is chosen
FASTER = 0.75  # several threads are chosen when they take at most this fraction of one thread's time
CHOOSE_AGAIN_AFTER = 2000  # large products; the machine's load changes, and the choice with it


def user_thread_setting(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """The first of MPIPROP_THREADS and THREAD_VARIABLES set in `environ`, as "NAME=VALUE"; None when none is."""
    for name in (OWN_VARIABLE, *THREAD_VARIABLES):
        if environ.get(name, "").strip():
            return f"{name}={environ[name]}"
    return None


def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS tells it, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def own_thread_count(environ: MutableMapping[str, str] = os.environ) -> int | None:
    """MPIPROP_THREADS as a positive integer, None when it is not set.

    Raises:
        ValueError: when it is set to anything but a positive integer.
    """
    text = environ.get(OWN_VARIABLE, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{OWN_VARIABLE} must be a positive integer (BLAS threads per process), got {text!r}")
    return int(text)


class ThreadPolicy:
    """Which BLAS thread count each product runs with (see the module's docstring).

    Args:
        environ: where the user's choice is read (MPIPROP_THREADS, then THREAD_VARIABLES).
        cores: the cores this process may use.
    """

    def __init__(self, environ: MutableMapping[str, str] = os.environ, cores: int | None = None):
        self.cores = available_cores() if cores is None else cores
        self.fixed = own_thread_count(environ)
        self.adaptive = user_thread_setting(environ) is None and self.cores > 1
        self.large_threads: int | None = None if self.adaptive else self.fixed
        self.timings: dict[int, list[float]] = {1: [], self.cores: []}
        self.current: int | None = None
        self.since_chosen = 0
        self._pools: list = []

    def start(self) -> None:
        """Find the BLAS pools loaded (numpy's, scipy's, MKL's) and set them to one thread, or to MPIPROP_THREADS."""
        import scipy.linalg.blas  # noqa: F401  (its own OpenBLAS pool, which inplace.py uses)
        import threadpoolctl

        from mpiprop.network.compute import mkl_gemm

        mkl_gemm.available()  # loads MKL where it is installed
        self._pools = threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers
        if self.fixed is not None:
            self.set_threads(self.fixed)
        elif self.adaptive:
            self.set_threads(1)

    def set_threads(self, count: int) -> None:
        """Give every BLAS pool found `count` threads (nothing when it has them already)."""
        if count != self.current:
            for pool in self._pools:
                pool.set_num_threads(count)
            self.current = count

    def run(self, multiply_adds: int, product: Callable[[], Result]) -> Result:
        """`product()` with the thread count for a product of `multiply_adds`."""
        if not self.adaptive or multiply_adds < LARGE_PRODUCT:
            return product()
        self.since_chosen += 1
        if self.since_chosen > CHOOSE_AGAIN_AFTER:
            self.large_threads, self.since_chosen = None, 0
            self.timings = {count: [] for count in self.timings}
        if self.large_threads == 1:
            return product()
        threads = self.large_threads or (1 if len(self.timings[1]) <= len(self.timings[self.cores]) else self.cores)
        self.set_threads(threads)
        started = time.perf_counter()
        try:
            return product()
        finally:
            elapsed = time.perf_counter() - started
            self.set_threads(1)
            if self.large_threads is None:
                self._note(threads, elapsed / multiply_adds)

    def _note(self, threads: int, seconds_per_multiply_add: float) -> None:
        self.timings[threads].append(seconds_per_multiply_add)
        if min(len(times) for times in self.timings.values()) >= TRIALS:
            several, one = (statistics.median(self.timings[count]) for count in (self.cores, 1))
            self.large_threads = self.cores if several <= FASTER * one else 1


_policy: list[ThreadPolicy] = []


def thread_policy() -> ThreadPolicy:
    """This process's policy, started on first use."""
    if not _policy:
        policy = ThreadPolicy()
        policy.start()
        _policy.append(policy)
    return _policy[0]


def run_product(multiply_adds: int, product: Callable[[], Result]) -> Result:
    """`product()` (a numpy BLAS call of `multiply_adds` multiply-adds) with this process's BLAS thread count."""
    policy = _policy[0] if _policy else thread_policy()
    return policy.run(multiply_adds, product)


def limit_threads(count: int, environ: MutableMapping[str, str] = os.environ) -> None:
    """Give this process `count` BLAS and OpenMP threads for every product, as if the user had set it.

    The limit applies to the libraries loaded now (threadpoolctl) and, through THREAD_VARIABLES,
    to those loaded later; the policy stops choosing. Used for the ranks of a multi-rank job.
    """
    import threadpoolctl

    for name in THREAD_VARIABLES:
        environ[name] = str(count)
    threadpoolctl.threadpool_limits(limits=count)
    if _policy:
        _policy[0].adaptive, _policy[0].current = False, count

