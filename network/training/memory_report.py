"""Memory report: bytes of parameters, gradients, optimizer state and peak activations on this process."""
from __future__ import annotations

import tracemalloc
from dataclasses import dataclass
from typing import Any, Iterable

from mpiprop.network.backend import is_array, module_for_device
from mpiprop.network.layers.parameter import Parameter

MIB = 1 << 20


@dataclass(frozen=True)
class MemoryReport:
    """Bytes held by one process for training; `peak_activations` is None when not measured."""

    parameters: int
    gradients: int
    optimizer_state: int
    peak_activations: int | None = None

    @property
    def model_state(self) -> int:
        """Parameters, gradients and optimizer state together: what every step keeps."""
        return self.parameters + self.gradients + self.optimizer_state

    @property
    def total(self) -> int:
        """Everything held at the peak: model state plus peak activations (none when not measured)."""
        return self.model_state + (self.peak_activations or 0)


def memory_report(parameters: Iterable[Parameter], optimizer: Any = None,
                  peak_activations: int | None = None) -> MemoryReport:
    """Count the bytes of `parameters`, their gradients and `optimizer`'s per-parameter state.

    A parameter or array reached twice (shared layers) counts once. A gradient whose elements all
    share one memory cell (strides of 0: ZeRO-2's stand-in for a gradient a rank does not hold,
    reading as zeros) counts as holding no bytes.

    Args:
        parameters: e.g. `model.parameters()` (on a tensor-parallel rank, its shares).
        optimizer: anything with a `state` list of dicts of arrays (the network optimizers); None for none.
        peak_activations: bytes measured with `PeakMemory`, or None.

    Returns:
        The report; optimizer state only counts once the optimizer has made its first step.

    Raises:
        TypeError: when `peak_activations` is neither None nor a number of bytes.
    """
    if peak_activations is not None and not isinstance(peak_activations, int):
        raise TypeError(f"peak_activations must be a number of bytes (e.g. PeakMemory().bytes) or None, "
                        f"got {type(peak_activations).__name__}")
    parameters = list(parameters)
    state_arrays = [value for state in getattr(optimizer, "state", []) for value in state.values() if is_array(value)]
    return MemoryReport(parameters=_bytes(p.data for p in parameters),
                        gradients=_bytes(p.grad for p in parameters if _holds_memory(p.grad)),
                        optimizer_state=_bytes(state_arrays), peak_activations=peak_activations)


def memory_table(reports: list[MemoryReport]) -> str:
    """One line per rank, in MiB: parameters, gradients, optimizer state, peak activations, total.

    Args:
        reports: one report per rank, in rank order (e.g. from `gather_memory_reports`).
    """
    lines = [f"{'rank':>4} {'params MiB':>11} {'grads MiB':>10} {'optim MiB':>10} {'peak act MiB':>13} "
             f"{'total MiB':>10}"]
    for rank, report in enumerate(reports):
        peak = "-" if report.peak_activations is None else f"{report.peak_activations / MIB:.3f}"
        lines.append(f"{rank:>4} {report.parameters / MIB:>11.3f} {report.gradients / MIB:>10.3f} "
                     f"{report.optimizer_state / MIB:>10.3f} {peak:>13} {report.total / MIB:>10.3f}")
    return "\n".join(lines)


class PeakMemory:
    """Context manager: the most bytes allocated at once inside it, beyond what was allocated on entry.

    On the CPU it traces Python and numpy allocations with `tracemalloc` (started and stopped
    here, unless already running). On a GPU it reads cupy's default memory pool, emptied of
    free blocks on entry: the bytes the pool holds on exit beyond those in use on entry, an
    upper bound of the peak (blocks freed inside stay pooled, and a block may be rounded up).

    Args:
        device: "cpu" or "cuda".

    Example::

        with PeakMemory() as peak:
            model.backward(loss_fn.backward(), model.forward(x)[1])
        peak.bytes
    """

    def __init__(self, device: str = "cpu"):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"PeakMemory device must be 'cpu' or 'cuda', got {device!r}")
        self.device = device
        self.bytes = 0

    def __enter__(self) -> "PeakMemory":
        if self.device == "cuda":
            self._pool = module_for_device("cuda").get_default_memory_pool()
            self._pool.free_all_blocks()
            self._start = self._pool.used_bytes()
            return self
        self._started_here = not tracemalloc.is_tracing()
        if self._started_here:
            tracemalloc.start()
        tracemalloc.reset_peak()
        self._start = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc_info) -> None:
        if self.device == "cuda":
            self.bytes = max(self._pool.total_bytes() - self._start, 0)
            return
        self.bytes = max(tracemalloc.get_traced_memory()[1] - self._start, 0)
        if self._started_here:
            tracemalloc.stop()


def _holds_memory(array: Any) -> bool:
    """False for an array of several elements that all share one memory cell (every stride 0)."""
    return array.ndim == 0 or any(array.strides)


def _bytes(arrays: Iterable[Any]) -> int:
    return sum(int(array.nbytes) for array in {id(array): array for array in arrays}.values())
