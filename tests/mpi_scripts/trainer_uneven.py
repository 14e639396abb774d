"""A Trainer of DataParallel on every rank with a training loader whose shards differ in size (uneven="keep").

Must fail on every rank at once with a ValueError saying why, not hang in the gradient allreduce.
"""
import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import DataParallel
from mpiprop.network.data.loader import ArrayDataset, DataLoader

rank, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
samples = 4 * size + 1
data = ArrayDataset(numpy.ones((samples, 3), dtype=numpy.float32), numpy.zeros(samples, dtype=numpy.int64))
loader = DataLoader(data, 2, uneven="keep", rank=rank, world_size=size)
model = DataParallel(nn.Sequential(nn.Linear(3, 2)))
trainer = nn.Trainer(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1), quiet=True)
trainer.fit(loader, epochs=2)
print(f"rank {rank} finished", flush=True)
