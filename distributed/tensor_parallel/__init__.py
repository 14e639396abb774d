"""tensor_parallel: Linear layers whose weight matrices are split over the ranks of a group (Megatron style)."""
from mpiprop.distributed.tensor_parallel.column_parallel_linear import ColumnParallelLinear
from mpiprop.distributed.tensor_parallel.full_state import full_state_dict, load_full_state_dict, named_split_layers
from mpiprop.distributed.tensor_parallel.group import tensor_parallel_group
from mpiprop.distributed.tensor_parallel.row_parallel_linear import RowParallelLinear

__all__ = ["ColumnParallelLinear", "RowParallelLinear", "tensor_parallel_group", "full_state_dict",
           "load_full_state_dict", "named_split_layers"]
