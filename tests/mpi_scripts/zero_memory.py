"""Optimizer state per rank under DataParallel, ZeRO-1 and ZeRO-2, from the memory report.

Four Linear(16, 16) layers in float64, one Adam step; rank 0 prints
"ZERO-MEMORY shard=S optimizer_state=[bytes of rank 0, rank 1, ...]" for S in 0, 1, 2.
"""
import numpy

import mpiprop.network as nn
from mpiprop import distributed
from mpiprop.distributed import DataParallel


def optimizer_state_per_rank(shard):
    nn.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(16, 16) for _ in range(4)]).to(dtype=numpy.float64)
    dp = DataParallel(model, shard_optimizer_state=shard)
    optimizer = dp.optimizer(nn.optim.Adam, lr=1e-3)
    x = numpy.random.default_rng(distributed.rank()).standard_normal((4, 16))
    loss_fn = nn.MSELoss()
    loss_fn(dp(x), x)
    dp.backward(loss_fn.backward())
    optimizer.step()
    reports = distributed.gather_memory_reports(nn.memory_report(dp.parameters(), optimizer))
    return None if reports is None else [report.optimizer_state for report in reports]


for shard in (0, 1, 2):
    per_rank = optimizer_state_per_rank(shard)
    if distributed.is_main_rank():
        print(f"ZERO-MEMORY shard={shard} optimizer_state={per_rank}", flush=True)
