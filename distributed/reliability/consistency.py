"""Check collectively, once, that every rank built the same model and chose the same settings."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mpiprop.distributed.reliability.settings_description import Plain, describe, layer_entries
from mpiprop.network.layers.layer import Layer

if TYPE_CHECKING:
    from mpiprop.distributed.transport.communicator import Communicator

Entry = tuple[str, str, tuple[int, ...], str]
SAME_SCRIPT = "every rank must run the same script with the same arguments"
_MISSING = "(not set)"


def model_signature(module: Layer) -> list[Entry]:
    """(kind, name, shape, dtype) for each parameter and then each buffer, in model order."""
    entries = [("parameter", name, tuple(p.shape), str(p.dtype)) for name, p in module.named_parameters()]
    entries += [("buffer", name, tuple(b.shape), str(b.dtype)) for name, b in module.named_buffers()]
    return entries


def check_agreement(comm: Communicator, owner: str, settings: dict[str, Any]) -> None:
    """Raise the same ValueError on every rank of `comm` unless every rank passed equal `settings`. Collective.

    One allgather of a small description (see `describe`: scalars as they are, layers by their
    structure and settings, optimizers by class and hyperparameters, schedules by their values).

    Args:
        comm: the ranks that must agree.
        owner: what is being built, for the message (e.g. "DataParallel").
        settings: name -> value on this rank.

    Raises:
        ValueError: naming the first setting that differs and each rank's value of it.
    """
    everyone = comm.allgather_object(describe(settings))
    problem = first_disagreement(everyone)
    if problem is not None:
        raise ValueError(f"{owner}: {problem}; {SAME_SCRIPT}")


def check_same_model(module: Layer, comm: Communicator, owner: str = "DataParallel",
                     settings: dict[str, Any] | None = None) -> None:
    """Raise the same ValueError on every rank when the ranks' `settings` or models differ. Collective.

    Every rank exchanges, in one allgather, its settings, its parameters' and buffers' names,
    shapes and dtypes, and its model's structure (each layer's type and public scalar settings,
    parameter-free layers included), so all of them reach the same verdict and none is left
    waiting in a later collective.

    Args:
        module: this rank's model.
        comm: the ranks that must agree.
        owner: what is being built, for the message.
        settings: the owner's own settings (name -> value), compared first.

    Raises:
        ValueError: naming the first setting, parameter, buffer or layer setting that differs, and the ranks.
    """
    mine = (describe(settings or {}), model_signature(module), dict(layer_entries(module)))
    everyone = comm.allgather_object(mine)
    problem = first_disagreement([described for described, _, _ in everyone])
    if problem is not None:
        raise ValueError(f"{owner}: {problem}; {SAME_SCRIPT}")
    for other_rank, (_, signature, _) in enumerate(everyone[1:], start=1):
        problem = first_difference(everyone[0][1], signature)
        if problem is not None:
            raise ValueError(f"{owner}: rank {other_rank} built a different model than rank 0: {problem}; "
                             "every rank must construct the same architecture with the same dtypes")
    problem = first_disagreement([structure for _, _, structure in everyone])
    if problem is not None:
        raise ValueError(f"{owner}: the ranks built different models: {problem}; "
                         "every rank must construct the same layers with the same settings")


def first_disagreement(everyone: list[dict[str, Plain]]) -> str | None:
    """"the ranks disagree on SETTING: rank 0 has A, rank 1 has B" for the first setting whose values differ
    (in rank 0's order, then the others'), or None when every rank's description is equal."""
    names = list(dict.fromkeys(name for described in everyone for name in described))
    for name in names:
        values = [described.get(name, _MISSING) for described in everyone]
        if any(value != values[0] or isinstance(value, bool) != isinstance(values[0], bool) for value in values):
            return f"the ranks disagree on {name}: {_by_value(values)}"
    return None


def _by_value(values: list[Plain]) -> str:
    """"rank 0 has 2, rank 1 has 0", grouping ranks with equal values ("ranks 0, 2, 3 have 0.1")."""
    groups: dict[str, list[int]] = {}
    for rank, value in enumerate(values):
        groups.setdefault(value if value == _MISSING else repr(value), []).append(rank)
    return ", ".join(f"rank {ranks[0]} has {shown}" if len(ranks) == 1 else
                     f"ranks {', '.join(map(str, ranks))} have {shown}" for shown, ranks in groups.items())


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
