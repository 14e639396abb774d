"""Tied parameters across pipeline stages: one Parameter used by layers on several stages (embedding and head)."""
from __future__ import annotations

from dataclasses import dataclass

from mpiprop.distributed.reliability.waits import waiting_in
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.layers.parameter import Parameter
from mpiprop.network.layers.sequential import Sequential


@dataclass
class TiedGroup:
    """Parameters that the same stages hold, and the communicator of those stages (None on the others)."""

    holders: tuple[int, ...]
    names: list[str]
    comm: Communicator | None


class TiedParameters:
    """The parameters that several ranks of a pipeline hold, each rank its own copy, as Megatron ties a
    GPT's embedding on the first stage to its head on the last.

    Every copy starts from rank 0's values (the pipeline sends each stage rank 0's state); after
    backward, `sum_gradients` adds each copy's gradient over the stages holding it (one allreduce
    per group of stages), so every copy takes the same step. The first holder counts the parameter
    in sums over the model (`counted_here`) and names it in checkpoints; later holders name it by
    the first holder's name as well (`first_name`).

    Args:
        model: the whole model, identical on every rank.
        ranges: the (start, stop) layers of each virtual stage, in order.
        pipeline_comm: the pipeline's ranks; virtual stage v runs on rank v % size. Collective over it.
    """

    def __init__(self, model: Sequential, ranges: list[tuple[int, int]], pipeline_comm: Communicator):
        self.rank = pipeline_comm.rank
        holders, first_names, owned = _holders(model, ranges, pipeline_comm.size)
        self._first_names = {key: first_names[key] for key, ranks in holders.items() if len(ranks) > 1}
        self._parameters = {key: owned[key] for key, ranks in holders.items() if len(ranks) > 1 and self.rank in ranks}
        self._not_counted = {key for key in self._parameters if holders[key][0] != self.rank}
        self.groups: list[TiedGroup] = []
        for ranks in sorted({ranks for ranks in holders.values() if len(ranks) > 1}):
            member = self.rank in ranks
            comm = pipeline_comm.split(color=1 if member else 0, key=self.rank)
            if not member:
                comm.free()
            names = [first_names[key] for key, held in holders.items() if held == ranks]
            self.groups.append(TiedGroup(ranks, names, comm if member else None))
        self._group_parameters = [[self._parameters[key] for key, held in holders.items() if held == group.holders
                                   and key in self._parameters] for group in self.groups]

    def __bool__(self) -> bool:
        return bool(self._first_names)

    def sum_gradients(self) -> None:
        """Add each tied parameter's gradient over the stages holding it; collective over each group's stages."""
        for group, params in zip(self.groups, self._group_parameters):
            if group.comm is None:
                continue
            with waiting_in(f"allreduce of the tied parameters {group.names} over stages {list(group.holders)}"):
                for p in params:
                    group.comm.allreduce(p.grad, "sum")

    def counted_here(self, p: Parameter) -> bool:
        """False for a tied copy whose first holder is another stage (that stage counts it)."""
        return id(p) not in self._not_counted

    def first_name(self, p: Parameter) -> str | None:
        """The whole-model name under which the first stage holding `p` lists it; None when `p` is not tied
        across stages or this rank is its first holder."""
        return self._first_names.get(id(p)) if id(p) in self._not_counted else None


def _holders(model: Sequential, ranges: list[tuple[int, int]], ranks: int):
    """For each parameter of `model` (by identity): the sorted ranks whose stages use it, its first name,
    and the Parameter."""
    holders: dict[int, set[int]] = {}
    owned: dict[int, Parameter] = {}
    for stage, (start, stop) in enumerate(ranges):
        for p in model[start:stop].parameters():
            holders.setdefault(id(p), set()).add(stage % ranks)
            owned[id(p)] = p
    first_names: dict[int, str] = {}
    for name, p in model.named_parameters():
        first_names.setdefault(id(p), name)
    return {key: tuple(sorted(ranks_)) for key, ranks_ in holders.items()}, first_names, owned
