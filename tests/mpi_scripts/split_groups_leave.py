"""Two DataParallel groups on split communicators: group A (ranks 0, 1) trains one step and ends its program;
group B (ranks 2, 3) goes on, rank 3 arriving late (`--late` s) at its second step, so rank 2 waits for it.
Rank 0 was never rank 2's peer: group B must finish, each of its ranks printing `rank R finished`.
With `--leave`, rank 3 ends its program instead of its second step: rank 2, its peer, must abort the job naming it."""
import argparse
import time

import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import DataParallel


def step(dp: DataParallel, optimizer, seed: int) -> None:
    generator = numpy.random.default_rng(seed)
    x = generator.standard_normal((8, 5)).astype(numpy.float32)
    y = generator.integers(0, 3, 8).astype(numpy.int64)
    optimizer.zero_grad()
    dp.train_step(x, y, nn.CrossEntropyLoss())
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--late", type=float, default=6.0)
    parser.add_argument("--leave", action="store_true")
    arguments = parser.parse_args()
    world = MPI.COMM_WORLD
    group = world.Split(world.rank // 2, world.rank)
    nn.manual_seed(0)
    dp = DataParallel(nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)), group)
    optimizer = dp.optimizer(nn.optim.SGD, lr=0.1)
    step(dp, optimizer, world.rank)
    if world.rank >= 2:
        if world.rank == 3:
            time.sleep(arguments.late)
            if arguments.leave:
                print(f"rank 3 leaves {time.time():.3f}", flush=True)
                return
        step(dp, optimizer, world.rank + 10)
    print(f"rank {world.rank} finished", flush=True)


if __name__ == "__main__":
    main()
