"""The ranks of a pipeline (and of a grid of pipelines): stages, tensor ranks and replicas as the Trainer sees them."""
from __future__ import annotations

from typing import Any, Callable, Iterable

from mpiprop.distributed.reliability.consistency import check_agreement
from mpiprop.network.layers.parameter import Parameter


class PipelineRanks:
    """`Ranks` of a `Pipeline`: rank 0 (stage 0 of replica 0) prints and writes; each replica reads its shard.

    The ranks holding one copy of the model are that copy's stages (and tensor ranks); whole-model
    dicts are joined over them and cut back to a tensor rank's shares.

    Args:
        pipe: the pipeline whose communicators (`comm`, `model_comm`) and placement this describes.
    """

    def __init__(self, pipe: Any):
        self.pipe = pipe

    @property
    def rank(self) -> int:
        return self.pipe.comm.rank

    @property
    def size(self) -> int:
        return self.pipe.comm.size

    @property
    def is_main(self) -> bool:
        return self.pipe.comm.rank == 0

    @property
    def data_shard(self) -> tuple[int, int]:
        return self.pipe.replica, self.pipe.replicas

    @property
    def position(self) -> str:
        return self.pipe.position

    def gather(self, value: Any) -> list[Any]:
        return self.pipe.comm.allgather_object(value)

    def check_agreement(self, owner: str, settings: dict[str, Any]) -> None:
        """Raise the same ValueError on every rank unless all passed equal `settings`; collective."""
        check_agreement(self.pipe.comm, owner, settings)

    def gather_model(self, value: Any) -> list[Any]:
        return self.pipe.stage_allgather(value)

    def join(self, part: dict[str, Any]) -> dict[str, Any] | None:
        return self.pipe.merge_over_stages(part)

    def cut(self, whole: dict[str, Any]) -> dict[str, Any]:
        return self.pipe.local_part(whole)

    def counted_once(self, named: Iterable[tuple[str, Parameter]]) -> list[Parameter]:
        if self.pipe.tensor_rank == 0:
            return [p for _, p in named if self.pipe.tied.counted_here(p)]
        return [p for name, p in named if name in self.pipe.splits and self.pipe.tied.counted_here(p)]

    def max_later(self, value: int) -> Callable[[], int]:
        return self.pipe.comm.max_later(value)

    def __repr__(self) -> str:
        return f"PipelineRanks({self.position})"
