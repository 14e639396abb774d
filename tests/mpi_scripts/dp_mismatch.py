"""Ranks that build different models: DataParallel raises the same clear ValueError on every rank."""
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import DataParallel


def model_for(rank: int, variant: str) -> nn.Sequential:
    last_width = 5 if (variant == "shape" and rank == 1) else 4
    layers = [nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, last_width)]
    if variant == "count" and rank == 1:
        layers += [nn.ReLU(), nn.Linear(last_width, 4)]
    return nn.Sequential(*layers)


def main() -> None:
    rank = MPI.COMM_WORLD.rank
    for variant in ("shape", "count"):
        try:
            DataParallel(model_for(rank, variant))
        except ValueError as error:
            print(f"rank {rank} {variant}: ValueError: {error}", flush=True)
        else:
            print(f"rank {rank} {variant}: no error", flush=True)
    MPI.COMM_WORLD.Barrier()


if __name__ == "__main__":
    main()
