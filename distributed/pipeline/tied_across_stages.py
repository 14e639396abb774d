"""Tied parameters across stages: one Parameter used by layers that different pipeline stages hold (a GPT's
token embedding on the first stage and its language-model head on the last)."""
from __future__ import annotations

from typing import Iterator

from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.layers.parameter import Parameter
from mpiprop.network.layers.sequential import Sequential


class TiedAcrossStages:
    """The parameters this stage shares with other stages, each with a communicator over the stages using it.

    Every stage holding a tied parameter starts from rank 0's values (the pipeline sends each stage
    its arrays), and after each backward `sum_gradients` adds the stages' gradients, so every copy
    takes the same step, as the single Parameter of the whole model does. The first stage holding
    it counts it in sums over the model (the gradient norm); `counted_elsewhere` names it on the others.

    Args:
        model: the whole model, the same on every rank of the pipeline.
        chunk_ranges: [start, stop) of the layers of every virtual stage, in virtual-stage order.
        pipeline_comm: the stages of this pipeline (rank = stage index). Collective over it.
    """

    def __init__(self, model: Sequential, chunk_ranges: list[tuple[int, int]], pipeline_comm: Communicator):
        stage = pipeline_comm.rank
        self.shared: list[tuple[Parameter, Communicator]] = []
        self.counted_elsewhere: set[int] = set()
        for parameter, stages in _parameters_of_several_stages(model, chunk_ranges, pipeline_comm.size):
            comm = pipeline_comm.split(color=0 if stage in stages else 1)
            if stage not in stages:
                comm.free()
                continue
            self.shared.append((parameter, comm))
            if stage != min(stages):
                self.counted_elsewhere.add(id(parameter))

    def sum_gradients(self) -> None:
        """Add the gradients of each tied parameter over the stages holding it, in place; collective over them."""
        for parameter, comm in self.shared:
            comm.allreduce(parameter.grad)

    def __len__(self) -> int:
        return len(self.shared)


def _parameters_of_several_stages(model: Sequential, chunk_ranges: list[tuple[int, int]],
                                  num_stages: int) -> Iterator[tuple[Parameter, frozenset[int]]]:
    """(parameter, the stages whose layers use it) for each parameter used on more than one stage, in model order."""
    stages_of: dict[int, set[int]] = {}
    parameters: dict[int, Parameter] = {}
    for chunk, (start, stop) in enumerate(chunk_ranges):
        for parameter in model[start:stop].parameters():
            stages_of.setdefault(id(parameter), set()).add(chunk % num_stages)
            parameters[id(parameter)] = parameter
    for key, stages in stages_of.items():
        if len(stages) > 1:
            yield parameters[key], frozenset(stages)
