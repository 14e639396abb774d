"""Train an MLP of Megatron-style blocks a few Adam steps and print each rank's memory report.

    python examples/memory_report.py                                   # one process
    mpiexec -n 4 python examples/memory_report.py --layout data         # DataParallel: whole model per rank
    mpiexec -n 4 python examples/memory_report.py --layout zero1        # and Adam's state sharded over the ranks
    mpiexec -n 4 python examples/memory_report.py --layout zero2        # and each rank keeps its own gradients
    mpiexec -n 4 python examples/memory_report.py --layout tensor       # each block split over the 4 ranks
    mpiexec -n 4 python examples/memory_report.py --layout tensor --recompute   # and blocks recomputed
    mpiexec -n 2 python examples/memory_report.py --layout tensor --device cuda # on the GPU (cupy's pool)

Each block is Linear(H, 4H) -> ReLU -> Linear(4H, H) -> Tanh; with `--layout tensor` its first
Linear is column-parallel and its second row-parallel over all ranks. The last lines printed
are the per-rank table and `throughput=<samples/s>`. Under zero2 a rank's gradients are its own
parameters' (about 1/N), and its peak also holds the whole gradient buckets of backward: on one node
the three slots of shared memory they take turns in (which tracemalloc cannot see; their bytes are
added), with MPI at most two reduce-scattering and the one being written.
"""
from __future__ import annotations

import argparse
import time
from typing import Sequence

import numpy

from mpiprop import distributed
import mpiprop.network as nn
from mpiprop.distributed.tensor_parallel import ColumnParallelLinear, RowParallelLinear, tensor_parallel_group
from mpiprop.network.backend import module_for_device
from mpiprop.network.training.memory_report import MemoryReport, PeakMemory, memory_report, memory_table

SHARDING = {"data": 0, "zero1": 1, "zero2": 2}  # DataParallel's shard_optimizer_state per layout


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", choices=["data", "zero1", "zero2", "tensor"], default="data",
                        help="data: DataParallel over all ranks; zero1, zero2: DataParallel with sharded optimizer "
                             "state (ZeRO stage 1 or 2); tensor: every block split over all ranks")
    parser.add_argument("--hidden", type=int, default=256, help="block width H (default 256)")
    parser.add_argument("--blocks", type=int, default=4, help="number of blocks (default 4)")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch per step (default 64)")
    parser.add_argument("--steps", type=int, default=5,
                        help="Adam steps; the first is traced for the peak, the others timed (default 5)")
    parser.add_argument("--recompute", action="store_true", help="recompute each block's activations in backward")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cpu (peak traced by tracemalloc) or cuda (cupy; peak read from its memory pool)")
    return parser.parse_args(argv)


def build_model(hidden: int, blocks: int, layout: str, recompute: bool) -> nn.Sequential:
    """`blocks` blocks of Linear(H, 4H) -> ReLU -> Linear(4H, H) -> Tanh, split or whole, recomputed or not."""
    nn.manual_seed(0)
    group = tensor_parallel_group(distributed.size()) if layout == "tensor" else None
    layers = []
    for _ in range(blocks):
        block = [nn.Linear(hidden, 4 * hidden), nn.ReLU(), nn.Linear(4 * hidden, hidden), nn.Tanh()]
        if group is not None:
            block[0], block[2] = ColumnParallelLinear(block[0], group), RowParallelLinear(block[2], group)
        layers.extend([nn.Recompute(*block)] if recompute else block)
    return nn.Sequential(*layers)


def main(argv: Sequence[str] | None = None) -> tuple[list[MemoryReport], float]:
    """Run the example; returns every rank's report and the throughput in samples per second."""
    args = parse_args(argv)
    distributed.start()  # the job's guards, before anything can fail on one rank only
    world_size = distributed.size()
    data_parallel = args.layout != "tensor"
    if data_parallel and args.batch_size % world_size:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the {world_size} ranks")
    model = build_model(args.hidden, args.blocks, args.layout, args.recompute).to(args.device)
    if data_parallel and world_size > 1:
        model = distributed.DataParallel(model, shard_optimizer_state=SHARDING[args.layout])
        optimizer = model.optimizer(nn.optim.Adam, lr=1e-3)
    else:
        optimizer = nn.optim.Adam(model.parameters(), lr=1e-3)
    local_batch = args.batch_size // world_size if data_parallel else args.batch_size
    x = numpy.random.default_rng(distributed.rank()).standard_normal((local_batch, args.hidden)).astype(numpy.float32)
    x = module_for_device(args.device).asarray(x)
    loss_fn = nn.MSELoss()

    def forward_backward() -> None:
        optimizer.zero_grad()
        loss_fn(model(x), x)
        model.backward(loss_fn.backward())

    with PeakMemory(args.device) as peak:  # the first step's activations, traced; the other steps timed untraced
        forward_backward()
    optimizer.step()
    started = time.perf_counter()
    for _ in range(args.steps - 1):
        forward_backward()
        optimizer.step()
    throughput = (args.steps - 1) * args.batch_size / (time.perf_counter() - started)
    slots = model.gradient_sync.slot_bytes if isinstance(model, distributed.DataParallel) else 0
    reports = distributed.gather_memory_reports(memory_report(model.parameters(), optimizer, peak.bytes + slots))
    if distributed.is_main_rank():
        print(f"layout={args.layout} ranks={world_size} recompute={args.recompute}")
        print(memory_table(reports))
        print(f"throughput={throughput:.1f}")
    return reports, throughput


if __name__ == "__main__":
    main()
