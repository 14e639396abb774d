"""`nn.clip_grad_norm_(dp.parameters(), c)` under ZeRO-2 clips by the global norm, as one process does, under mpiexec.

Float64; each rank holds its own parameters' gradients only. For norm types 2, 1 and inf the returned norm and each
rank's own clipped gradients must equal one process's on the global batch within TOLERANCE. Prints "CLIP-OK rank=R".
"""
import math

import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import DataParallel

TOLERANCE = 1e-12
WORLD = MPI.COMM_WORLD


def build_model() -> nn.Sequential:
    nn.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype=numpy.float64)


def main() -> None:
    generator = numpy.random.default_rng(1)
    x, y = generator.standard_normal((12, 4)), generator.integers(0, 3, 12)
    mine = numpy.array_split(numpy.arange(12), WORLD.size)[WORLD.rank]
    dp = DataParallel(build_model(), shard_optimizer_state=2, bucket_cap_mb=100 / 2**20)
    dp.optimizer(nn.optim.SGD, lr=0.1)
    for norm_type in (2.0, 1.0, math.inf):
        reference = build_model()
        nn.LocalStrategy(reference).train_step(x, y, nn.CrossEntropyLoss())
        expected = nn.clip_grad_norm_(reference.parameters(), 0.1, norm_type)
        dp.zero_grad()
        dp.train_step(x[mine], y[mine], nn.CrossEntropyLoss())
        norm = nn.clip_grad_norm_(dp.parameters(), 0.1, norm_type)
        assert abs(norm - expected) < TOLERANCE, (WORLD.rank, norm_type, norm, expected)
        for p, q in zip(dp.parameters(), reference.parameters()):
            if dp.owner_of[id(p)] == WORLD.rank:
                assert numpy.abs(p.grad - q.grad).max() < TOLERANCE, (WORLD.rank, norm_type)
    print(f"CLIP-OK rank={WORLD.rank}", flush=True)


if __name__ == "__main__":
    main()
