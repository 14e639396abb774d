"""tensor_parallel: layers whose parameters are split over the ranks of a group (Megatron style): Linear column
and row, attention by heads, embedding, head and cross-entropy by vocabulary shards."""
from mpiprop.distributed.tensor_parallel.column_parallel_linear import ColumnParallelLinear
from mpiprop.distributed.tensor_parallel.full_state import full_state_dict, load_full_state_dict, named_split_layers
from mpiprop.distributed.tensor_parallel.fused_column_parallel_linear import FusedColumnParallelLinear
from mpiprop.distributed.tensor_parallel.group import tensor_parallel_group
from mpiprop.distributed.tensor_parallel.head_parallel_attention import HeadParallelSelfAttention
from mpiprop.distributed.tensor_parallel.row_parallel_linear import RowParallelLinear
from mpiprop.distributed.tensor_parallel.split_gpt import tensor_parallel_gpt
from mpiprop.distributed.tensor_parallel.split_layer import SplitLayer
from mpiprop.distributed.tensor_parallel.vocab_parallel_cross_entropy import VocabParallelCrossEntropy
from mpiprop.distributed.tensor_parallel.vocab_parallel_embedding import VocabParallelEmbedding
from mpiprop.distributed.tensor_parallel.vocab_parallel_head import VocabParallelTiedLinear

__all__ = ["ColumnParallelLinear", "RowParallelLinear", "tensor_parallel_group", "full_state_dict",
           "load_full_state_dict", "named_split_layers", "FusedColumnParallelLinear", "HeadParallelSelfAttention",
           "SplitLayer", "VocabParallelEmbedding", "VocabParallelTiedLinear", "VocabParallelCrossEntropy",
           "tensor_parallel_gpt"]
