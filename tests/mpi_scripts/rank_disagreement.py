"""Ranks that differ in one setting (rank 1's value differs): construction raises the same ValueError on every rank.

Usage: rank_disagreement.py SCENARIO. Each rank prints `rank R reached T` (time.time()) just before
the construction that carries the disagreement, then `rank R ValueError after S s: MESSAGE` or,
when nothing was raised and training ran, `rank R trained: weights differ by D`.
"""
import sys
import time

import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import ColumnParallelLinear, DataParallel, Pipeline, tensor_parallel_group

RANK = MPI.COMM_WORLD.rank
DIFFERS = RANK == 1


def mlp(activation: type = nn.ReLU, p: float = 0.0, batch_norm: bool = False) -> nn.Sequential:
    nn.manual_seed(0)
    layers = [nn.Linear(6, 16), *([nn.BatchNorm1d(16)] if batch_norm else []), activation(), nn.Dropout(p),
              nn.Linear(16, 16), activation(), nn.Linear(16, 3)]
    return nn.Sequential(*layers)


def batches(count: int = 4, rows: int = 8):
    generator = numpy.random.default_rng(RANK)
    for _ in range(count):
        yield (generator.standard_normal((rows, 6)).astype(numpy.float32),
               generator.integers(0, 3, rows).astype(numpy.int64))


def train_data_parallel(dp: DataParallel, optimizer) -> None:
    loss_fn = nn.CrossEntropyLoss()
    for x, y in batches():
        optimizer.zero_grad()
        dp.train_step(x, y, loss_fn)
        optimizer.step()


def data_parallel(**settings) -> None:
    dp = DataParallel(mlp(batch_norm=True), **settings)
    train_data_parallel(dp, dp.optimizer(nn.optim.SGD, lr=0.1))
    report(dp.parameters(), MPI.COMM_WORLD)


def pipeline(**settings) -> None:
    pipe = Pipeline(mlp(), **settings)
    optimizer = nn.optim.SGD(pipe.parameters(), lr=0.1)
    for x, y in batches():
        optimizer.zero_grad()
        pipe.train_step(x, y, nn.CrossEntropyLoss())
        optimizer.step()
    print(f"rank {RANK} trained", flush=True)


def trainer(optimizer_class=nn.optim.SGD, model=None, **settings) -> None:
    hyperparameters = settings.pop("hyperparameters", {"lr": 0.1})
    dp = DataParallel(model or mlp())
    x, y = (numpy.concatenate(part) for part in zip(*batches(4, 16)))
    loader = nn.DataLoader(nn.ArrayDataset(x, y), 8, rank=RANK, world_size=MPI.COMM_WORLD.size)
    fit = nn.Trainer(dp, nn.CrossEntropyLoss(), optimizer_class(dp.parameters(), **hyperparameters), quiet=True,
                     **settings)
    fit.fit(loader, 2)
    report(dp.parameters(), MPI.COMM_WORLD)


def tensor_parallel(size: int) -> None:
    group = tensor_parallel_group(size)
    nn.manual_seed(0)
    layer = ColumnParallelLinear(nn.Linear(4, 8), group)
    print(f"rank {RANK} built a group of {group.size} and {layer!r}", flush=True)


def report(parameters, comm) -> None:
    weights = numpy.concatenate([numpy.ravel(p.data) for p in parameters])
    everyone = comm.allgather(weights)
    print(f"rank {RANK} trained: weights differ by {float(numpy.max(numpy.abs(everyone[0] - everyone[1]))):.3g}",
          flush=True)


def one_if(value, other):
    return other if DIFFERS else value


SCENARIOS = {
    "dp_shard_optimizer_state": lambda: data_parallel(shard_optimizer_state=one_if(2, 0)),
    "dp_shared_memory": lambda: data_parallel(shared_memory=one_if(True, False)),
    "dp_compression": lambda: data_parallel(compression=one_if(None, "float16")),
    "dp_bucket_cap_mb": lambda: data_parallel(bucket_cap_mb=one_if(4, 0.0005)),
    "dp_broadcast_buffers": lambda: data_parallel(broadcast_buffers=one_if(True, False)),
    "pipe_schedule": lambda: pipeline(micro_batches=4, schedule=one_if("1f1b", "gpipe")),
    "pipe_micro_batches": lambda: pipeline(micro_batches=one_if(2, 4)),
    "pipe_balance": lambda: pipeline(micro_batches=2, balance=one_if([3, 3], [2, 4])),
    "model_activation": lambda: trainer(model=mlp(activation=one_if(nn.Tanh, nn.ReLU))),
    "model_dropout": lambda: trainer(model=mlp(p=one_if(0.1, 0.2))),
    "trainer_lr": lambda: trainer(hyperparameters={"lr": one_if(0.1, 0.05)}),
    "trainer_optimizer": lambda: trainer(optimizer_class=one_if(nn.optim.Adam, nn.optim.SGD)),
    "trainer_momentum": lambda: trainer(hyperparameters={"lr": 0.1, "momentum": one_if(0.9, 0.0)}),
    "trainer_clipping": lambda: trainer(clip_grad_norm=one_if(None, 0.01)),
    "trainer_schedule": lambda: trainer(lr_schedule=one_if(nn.lr_schedules.StepLR(0.1, step_size=2, gamma=0.5),
                                                           nn.lr_schedules.StepLR(0.1, step_size=2, gamma=0.1))),
    "tp_size": lambda: tensor_parallel(one_if(2, 1)),
}


def main() -> None:
    scenario = SCENARIOS[sys.argv[1]]
    MPI.COMM_WORLD.Barrier()
    reached = time.time()
    print(f"rank {RANK} reached {reached:.3f}", flush=True)
    try:
        scenario()
    except ValueError as error:
        print(f"rank {RANK} ValueError after {time.time() - reached:.2f} s: {error}", flush=True)


if __name__ == "__main__":
    main()
