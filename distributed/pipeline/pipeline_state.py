"""A pipeline stage's state under the whole model's names: its chunks' layers renumbered into the model's."""
from __future__ import annotations

from typing import Any, Iterator

from mpiprop.distributed.pipeline.tied_parameters import TiedParameters
from mpiprop.distributed.reliability.waits import waiting_in
from mpiprop.distributed.tensor_parallel.named_shares import split_blocks
from mpiprop.distributed.tensor_parallel.split import Split
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.backend import Array
from mpiprop.network.layers.parameter import Parameter
from mpiprop.network.layers.sequential import Sequential
from mpiprop.network.training.shares import join_parts


def named_chunk_parameters(chunks: list[Sequential], first_layers: list[int], tied: TiedParameters,
                           prefix: str = "") -> Iterator[tuple[str, Parameter]]:
    """The chunks' parameters under their names in the whole model, e.g. ("4.weight", p).

    A copy of a parameter tied to an earlier stage comes first under that stage's name, then under its own.

    Args:
        chunks: the stage's chunks of the model.
        first_layers: the whole-model index of each chunk's first layer.
        tied: the parameters tied across stages.
        prefix: put before every name.
    """
    for first, chunk in zip(first_layers, chunks):
        for name, p in chunk.named_parameters():
            tied_name = tied.first_name(p)
            if tied_name is not None:
                yield prefix + tied_name, p
            yield prefix + renumbered(name, first), p


def named_chunk_buffers(chunks: list[Sequential], first_layers: list[int],
                        prefix: str = "") -> Iterator[tuple[str, Array]]:
    """The chunks' buffers (e.g. BatchNorm statistics) under their whole-model names."""
    for first, chunk in zip(first_layers, chunks):
        for name, buffer in chunk.named_buffers():
            yield prefix + renumbered(name, first), buffer


def load_chunks(chunks: list[Sequential], first_layers: list[int], state: dict[str, Array]) -> None:
    """Load each chunk's entries of `state` (whole-model names) into it.

    Raises:
        KeyError: when an entry of a chunk's layer is missing or unexpected.
        ValueError: when a shape differs.
    """
    for first, chunk in zip(first_layers, chunks):
        layers = len(list(chunk.children()))
        chunk.load_state_dict({renumbered(name, -first): value for name, value in state.items()
                               if first <= layer_index(name) < first + layers})


def in_layer_order(state: dict[str, Any]) -> dict[str, Any]:
    """`state` sorted by the whole-model index of each entry's layer (each layer's entries in their order)."""
    return dict(sorted(state.items(), key=lambda item: layer_index(item[0])))


def whole_state_shapes(model: Sequential, splits: dict[str, Split]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every entry of the whole model's state dict, split parameters at their whole shape."""
    shapes = {name: tuple(array.shape) for name, array in [*model.named_parameters(), *model.named_buffers()]}
    shapes.update({name: split.whole for name, split in splits.items()})
    return shapes


def join_over_stages(part: dict[str, Any], model_comm: Communicator, is_main: bool,
                     shapes: dict[str, tuple[int, ...]], splits: dict[str, Split]) -> dict[str, Any] | None:
    """The union of the parts of every rank of `model_comm` on its main rank, None elsewhere; collective.

    Args:
        part: this rank's entries, keyed by whole-model name.
        model_comm: the ranks holding one copy of the model.
        is_main: whether this rank receives the union (rank 0 of the strategy).
        shapes: the whole model's state shapes, to join the split entries into.
        splits: the split parameters, whose tensor ranks' shares are joined into whole arrays.
    """
    with waiting_in("gather of the stages' state on stage 0"):
        parts = model_comm.gather_object(part)
    if parts is None or not is_main:
        return None
    return join_parts(parts, shapes, split_blocks(splits))


def renumbered(name: str, shift: int) -> str:
    """"2.weight" shifted by 3 is "5.weight": a chunk's names in the whole model's numbering and back."""
    number, rest = name.split(".", 1)
    return f"{int(number) + shift}.{rest}"


def layer_index(name: str) -> int:
    """The whole-model layer index an entry's name starts with: 4 for "4.weight"."""
    return int(name.split(".", 1)[0])
