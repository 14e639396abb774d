"""Under ZeRO-2, a rank that writes into a gradient it does not own between steps ends the job with the fix.

    mpiexec -n 2 python zero2_foreign_gradient.py

After one step rank 1 adds 1.0 to every gradient it does not own; the next backward raises on
rank 1, and the job must end (not hang) with the error on stderr.
"""
import numpy

import mpiprop.network as nn
from mpiprop.distributed import DataParallel

nn.manual_seed(0)
dp = DataParallel(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4)).to(dtype=numpy.float64),
                  shard_optimizer_state=2)
optimizer = dp.optimizer(nn.optim.SGD, lr=0.1)
x = numpy.ones((2, 4))
loss_fn = nn.MSELoss()
for step in range(2):
    loss_fn(dp(x), x)
    dp.backward(loss_fn.backward())
    optimizer.step()
    if dp.rank == 1:
        for p in dp.parameters():
            if dp.owner_of[id(p)] != dp.rank:
                p.grad += 1.0
