"""Gather every rank's memory report, to print one table for the whole job."""
from __future__ import annotations

from mpiprop.distributed.transport.communicator import Communicator, MpiComm, as_communicator
from mpiprop.network.training.memory_report import MemoryReport


def gather_memory_reports(report: MemoryReport, comm: "MpiComm | Communicator | None" = None) -> list[MemoryReport]:
    """Every rank's `report`, in rank order, on every rank. Collective over `comm` (default: the world).

    Args:
        report: this rank's report (`mpiprop.network.training.memory_report`).
        comm: the ranks to gather from.

    Returns:
        One report per rank; `memory_table` prints them.

    Raises:
        TypeError: when `report` is not a MemoryReport.
    """
    if not isinstance(report, MemoryReport):
        raise TypeError(f"gather_memory_reports needs a MemoryReport (from memory_report(...)), "
                        f"got {type(report).__name__}")
    if isinstance(comm, Communicator):
        return comm.allgather_object(report)
    with Communicator(comm) as own:
        return own.allgather_object(report)
