"""VocabParallelTiedLinear: the language-model head on a VocabParallelEmbedding's shard, giving the logits' shard."""
from __future__ import annotations

from mpiprop.distributed.tensor_parallel.sequence_parallel import gather_rows, reduce_scatter_rows
from mpiprop.distributed.tensor_parallel.split import Split
from mpiprop.distributed.tensor_parallel.split_layer import SplitLayer
from mpiprop.distributed.tensor_parallel.vocab_parallel_embedding import VocabParallelEmbedding
from mpiprop.network.backend import Array
from mpiprop.network.checks import float_array, same_kind_as_weights
from mpiprop.network.compute.inplace import add_matmul_
from mpiprop.network.compute.matmul import matmul


class VocabParallelTiedLinear(SplitLayer):
    """logits_r = x @ weight_r.T: this rank's vocabulary shard of the logits, from the embedding's shard.

    `weight` is the `VocabParallelEmbedding`'s Parameter itself (weight tying), so its gradient
    sums both uses. The input is the whole (..., C) activation, the same on every rank; the
    output is (..., stop - start), the logits of the ids this rank holds (padding rows give
    none), which `VocabParallelCrossEntropy` takes without ever gathering the V-wide logits.
    Forward needs no communication; backward sums the input gradient over the group (one allreduce).
    With the embedding's `sequence_parallel`, the input is this rank's shard of the rows (the first
    axis): forward gathers the whole activation (one allgather), backward reduce-scatters the input
    gradient back into shards.

    As the last layer of a model in a `Pipeline`, every tensor rank of the last stage reports its
    shard as the output (`splits_output`), so a loss on the outputs runs on each of them.

    Args:
        embedding: the VocabParallelEmbedding whose shard to share.

    Raises:
        TypeError: when `embedding` is not a VocabParallelEmbedding.
    """

    splits_output = True
    rank_specific = ("held",)

    def __init__(self, embedding: VocabParallelEmbedding):
        super().__init__()
        if not isinstance(embedding, VocabParallelEmbedding):
            raise TypeError(f"{type(self).__name__} shares the weight of a VocabParallelEmbedding, "
                            f"got {type(embedding).__name__}")
        self.group = embedding.group
        self.sequence_parallel = embedding.sequence_parallel
        self.weight = embedding.weight
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.held = embedding.vocab_stop - embedding.vocab_start

    def parameter_splits(self) -> dict[str, Split]:
        return {"weight": Split(0, (self.num_embeddings, self.embedding_dim), self.group.size)}

    def forward(self, x: Array) -> tuple[Array, Array]:
        self._check_input(x)
        if self.sequence_parallel:
            x = gather_rows(x, self.group)
        logits = matmul(x.reshape(-1, self.embedding_dim), self.weight.data[:self.held], transpose_b=True)
        return logits.reshape(x.shape[:-1] + (self.held,)), x

    def backward_input(self, dy: Array, x: Array) -> Array:
        self._check_output_grad(dy, x)
        dx = matmul(dy.reshape(x.size // self.embedding_dim, self.held), self.weight.data[:self.held]).reshape(x.shape)
        return reduce_scatter_rows(dx, self.group) if self.sequence_parallel else self.group.allreduce(dx)

    def backward_weight(self, dy: Array, x: Array) -> None:
        self._check_output_grad(dy, x)
        rows = x.size // self.embedding_dim
        add_matmul_(self.weight.grad[:self.held], dy.reshape(rows, self.held).T, x.reshape(rows, self.embedding_dim))

    def _check_input(self, x: Array) -> None:
        float_array(x, f"input of {self!r}")
        if x.ndim < 2 or x.shape[-1] != self.embedding_dim:
            raise ValueError(f"{self!r} expects input of shape (..., {self.embedding_dim}) with a batch dimension "
                             f"first, but got {tuple(x.shape)}")
        same_kind_as_weights(x, self.weight.data, self)

    def _check_output_grad(self, dy: Array, x: Array) -> None:
        expected = tuple(x.shape[:-1]) + (self.held,)
        if tuple(dy.shape) != expected:
            raise ValueError(f"{self!r} got an output gradient of shape {tuple(dy.shape)} but its output has shape "
                             f"{expected}; pass the gradient of the loss with respect to this rank's logits")

    def extra_repr(self) -> str:
        return (f"{self.embedding_dim}, {self.num_embeddings}, {self.held} logits on rank {self.group.rank} of "
                f"{self.group.size}, tied")
