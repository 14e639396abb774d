"""Check that every rank built the same model before any collective depends on it."""
from __future__ import annotations

from typing import TYPE_CHECKING

from mpiprop.network.layers.layer import Layer

if TYPE_CHECKING:
    from mpiprop.distributed.transport.communicator import Communicator

Entry = tuple[str, str, tuple[int, ...], str]


def model_signature(module: Layer) -> list[Entry]:
    """(kind, name, shape, dtype) for each parameter and then each buffer, in model order."""
    entries = [("parameter", name, tuple(p.shape), str(p.dtype)) for name, p in module.named_parameters()]
    entries += [("buffer", name, tuple(b.shape), str(b.dtype)) for name, b in module.named_buffers()]
    return entries


def check_same_model(module: Layer, comm: "Communicator", owner: str = "DataParallel") -> None:
    """Raise the same ValueError on every rank when any rank's model differs from rank 0's.

    Collective: every rank exchanges its signature first, so all of them reach the same verdict
    and none is left waiting in a later collective.

    Raises:
        ValueError: naming the first rank and the first parameter or buffer that differs.
    """
    signatures = comm.allgather_object(model_signature(module))
    for other_rank, signature in enumerate(signatures[1:], start=1):
        problem = first_difference(signatures[0], signature)
        if problem is not None:
            raise ValueError(f"{owner}: rank {other_rank} built a different model than rank 0: {problem}; "
                             "every rank must construct the same architecture with the same dtypes")


def first_difference(reference: list[Entry], other: list[Entry]) -> str | None:
    """A description of the first entry where `other` differs from `reference`, or None when equal."""
    for position, (expected, got) in enumerate(zip(reference, other)):
        if expected != got:
            kind, name, shape, dtype = expected
            return (f"entry {position} is {kind} {name!r} of shape {shape} and dtype {dtype} on rank 0 "
                    f"but {got[0]} {got[1]!r} of shape {got[2]} and dtype {got[3]} there")
    if len(reference) != len(other):
        ours, theirs = _counts(reference), _counts(other)
        return (f"rank 0 has {ours[0]} parameters and {ours[1]} buffers, "
                f"that rank {theirs[0]} parameters and {theirs[1]} buffers")
    return None


def _counts(entries: list[Entry]) -> tuple[int, int]:
    parameters = sum(entry[0] == "parameter" for entry in entries)
    return parameters, len(entries) - parameters
