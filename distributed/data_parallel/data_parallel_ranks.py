"""The ranks of data-parallel training: every rank holds the whole model and reads its own shard."""
from __future__ import annotations

from typing import Any, Callable, Iterable

from mpiprop.distributed.reliability.consistency import check_agreement
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.layers.parameter import Parameter


class DataParallelRanks:
    """`Ranks` of `DataParallel` over `comm`: rank 0 prints and writes, rank r reads shard r.

    Each rank holds the whole model, so joining and cutting whole-model dicts change nothing;
    with `gradient_shards` (ZeRO-2) each rank holds the synchronised gradients of its own
    parameters only, so values about the gradients are gathered over every rank.

    Args:
        comm: the data-parallel communicator.
        gradient_shards: whether each rank keeps only its share of the averaged gradients.
    """

    def __init__(self, comm: Communicator, gradient_shards: bool = False):
        self.comm, self.gradient_shards = comm, gradient_shards

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def size(self) -> int:
        return self.comm.size

    @property
    def is_main(self) -> bool:
        return self.comm.rank == 0

    @property
    def data_shard(self) -> tuple[int, int]:
        return self.comm.rank, self.comm.size

    @property
    def position(self) -> str:
        return f"rank {self.comm.rank}"

    def gather(self, value: Any) -> list[Any]:
        return self.comm.allgather_object(value)

    def check_agreement(self, owner: str, settings: dict[str, Any]) -> None:
        """Raise the same ValueError on every rank unless all passed equal `settings`; collective."""
        check_agreement(self.comm, owner, settings)

    def gather_model(self, value: Any) -> list[Any]:
        return self.comm.allgather_object(value) if self.gradient_shards else [value]

    def join(self, part: dict[str, Any]) -> dict[str, Any] | None:
        return dict(part) if self.is_main else None

    def cut(self, whole: dict[str, Any]) -> dict[str, Any]:
        return whole

    def counted_once(self, named: Iterable[tuple[str, Parameter]]) -> list[Parameter]:
        return [p for _, p in named]

    def max_later(self, value: int) -> Callable[[], int]:
        return self.comm.max_later(value)

    def __repr__(self) -> str:
        return f"DataParallelRanks(rank={self.rank}, size={self.size}, gradient_shards={self.gradient_shards})"
