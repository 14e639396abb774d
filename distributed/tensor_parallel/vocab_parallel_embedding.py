"""VocabParallelEmbedding: an Embedding whose vocabulary rows are split over the tensor-parallel ranks."""
from __future__ import annotations

from mpiprop.distributed.tensor_parallel.sequence_parallel import gather_rows, reduce_scatter_rows
from mpiprop.distributed.tensor_parallel.split import Split, cut_share
from mpiprop.distributed.tensor_parallel.split_layer import SplitLayer
from mpiprop.distributed.tensor_parallel.group import require_group
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.backend import Array, get_array_module
from mpiprop.network.layers.embedding import Embedding, scatter_add_rows_
from mpiprop.network.layers.parameter import Parameter


def vocab_shard(vocab_size: int, ranks: int, rank: int) -> tuple[int, int]:
    """[start, stop) of the ids that tensor rank `rank` holds: ceil(vocab_size / ranks) rows each, in rank
    order, the last ranks' ending early (their remaining rows are padding, never used)."""
    width = -(-vocab_size // ranks)
    start = min(rank * width, vocab_size)
    return start, min(start + width, vocab_size)


class VocabParallelEmbedding(SplitLayer):
    """y = weight[ids] with the V rows of the table cut into T contiguous shards, one per rank.

    The vocabulary is padded to a multiple of T: each rank holds ceil(V/T) rows, the padding rows
    at the end of the last shards stay zero, are never looked up and get no gradient, and
    checkpoints hold the whole (V, C) table without them. Forward looks up the ids in this rank's
    range, zeros for the others, and sums over the group (one allreduce), so every rank gets
    the whole (..., C) output; backward adds each id's gradient to the rank holding its row.

    With `sequence_parallel`, forward sums the lookups and hands each rank its shard of the rows
    (the first axis of the ids; one reduce-scatter), and backward gathers the whole output
    gradient (one allgather).

    Args:
        embedding: the whole Embedding; group rank 0's table is used on every rank.
        group: the tensor-parallel Communicator (see `tensor_parallel_group`).
        sequence_parallel: whether the output leaves cut by rows over the group.

    Raises:
        TypeError: when `embedding` is not an Embedding or `group` not a Communicator.
    """

    rank_specific = ("vocab_start", "vocab_stop")

    def __init__(self, embedding: Embedding, group: Communicator, *, sequence_parallel: bool = False):
        super().__init__()
        if not isinstance(embedding, Embedding):
            raise TypeError(f"{type(self).__name__} is built from a network Embedding, got {type(embedding).__name__}")
        require_group(group, type(self).__name__)
        self.group = group
        self.sequence_parallel = bool(sequence_parallel)
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.padding_idx = embedding.padding_idx
        self.vocab_start, self.vocab_stop = vocab_shard(self.num_embeddings, group.size, group.rank)
        whole = group.bcast(embedding.weight.data.copy())
        self.weight = Parameter(cut_share(whole, self.parameter_splits()["weight"], group.rank))

    def parameter_splits(self) -> dict[str, Split]:
        return {"weight": Split(0, (self.num_embeddings, self.embedding_dim), self.group.size)}

    def forward(self, ids: Array) -> tuple[Array, Array]:
        Embedding._check_ids(self, ids)
        local, held = self._local_ids(ids)
        y = self.weight.data[local]
        y *= held[..., None]
        return reduce_scatter_rows(y, self.group) if self.sequence_parallel else self.group.allreduce(y), ids

    def backward_input(self, dy: Array, ids: Array) -> None:
        """None: integer ids have no gradient."""
        Embedding._check_output_grad(self, dy, ids)
        return None

    def backward_weight(self, dy: Array, ids: Array) -> None:
        self.add_weight_grad(gather_rows(dy, self.group, ids.shape[0]) if self.sequence_parallel else dy, ids)

    def add_weight_grad(self, dy: Array, ids: Array) -> None:
        """Add the gradient of the whole output, `dy` (..., C) for all of `ids`, to this rank's rows of the table."""
        Embedding._check_output_grad(self, dy, ids)
        local, held = self._local_ids(ids.reshape(-1))
        if self.padding_idx is not None:
            held &= ids.reshape(-1) != self.padding_idx
        scatter_add_rows_(self.weight.grad, local[held], dy.reshape(-1, self.embedding_dim)[held])

    def _local_ids(self, ids: Array) -> tuple[Array, Array]:
        """(row of each id in this rank's shard, 0 where another rank holds it; whether this rank holds it)."""
        xp = get_array_module(ids)
        held = (ids >= self.vocab_start) & (ids < self.vocab_stop)
        return xp.where(held, ids - self.vocab_start, 0), held

    def extra_repr(self) -> str:
        mode = ", sequence parallel" if self.sequence_parallel else ""
        return (f"{self.num_embeddings}, {self.embedding_dim}, ids [{self.vocab_start}, {self.vocab_stop}) on rank "
                f"{self.group.rank} of {self.group.size}{mode}")
