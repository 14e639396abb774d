"""ZeRO-2's gradient memory per rank, and gradient accumulation under no_sync, against hand counts and one process.

    mpiexec -n N python zero2_gradients.py [--mpi]

Twelve Linear(128, 128) layers in float64, buckets of one layer each (bias 128 + weight 16384 values),
shard_owners giving each rank whole layers. After a synchronised step each rank measures the bytes
its gradient arrays span (its own parameters' gradients, plus one zero element per bucket that
stands in for the others'), the bytes the sync object holds (those plus the flags, and,
reduce-scattering in shared memory, the ring of three bucket-sized slots that stays allocated) and
the memory report's gradients, beside hand counts; and, for the backward, the most bytes of
gradients the sync object held at once and tracemalloc's peak beyond ZeRO-1's, beside its own share
plus three whole buckets (the three slots; with MPI two reduce-scattering and one being written).
Then it trains three steps of two accumulated micro-batches each (the first under no_sync; gradients
zeroed or set to none in turn) and checks that the weights equal one process's doing the same on the
global micro-batches.
With --mpi, DataParallel(..., shared_memory=False): MPI's reduce-scatter instead of the slots.
Rank 0 prints "ZERO2-GRADIENTS <json>" with every rank's figures and "ZERO2-ACCUMULATION max_abs_diff=D".
"""
import json
import sys

import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import DataParallel
from mpiprop.distributed.data_parallel.parameter_shards import shard_owners

try:
    from numpy.lib.array_utils import byte_bounds  # NumPy 2
except ImportError:
    from numpy import byte_bounds

WORLD = MPI.COMM_WORLD
LAYERS, WIDTH, ROWS_PER_RANK = 12, 128, 2
BUCKET_BYTES = (WIDTH + WIDTH * WIDTH) * 8  # one layer: the bucket closes once it holds this many bytes
ITEM = 8
TOLERANCE = 1e-6
TRACED_SLACK = 64 * 1024  # Python objects and MPI requests a backward makes besides the arrays
SHARED_MEMORY = "--mpi" not in sys.argv[1:]


def build_model():
    nn.manual_seed(0)
    layers = []
    for _ in range(LAYERS):
        layers += [nn.Linear(WIDTH, WIDTH), nn.Tanh()]
    return nn.Sequential(*layers[:-1]).to(dtype=numpy.float64)


def global_batch(step):
    rng = numpy.random.default_rng(step)
    rows = ROWS_PER_RANK * WORLD.size
    return rng.standard_normal((rows, WIDTH)), rng.standard_normal((rows, WIDTH))


def my_rows(array):
    return array[WORLD.rank * ROWS_PER_RANK:(WORLD.rank + 1) * ROWS_PER_RANK]


def own_values():
    """Hand count: layer sizes in backward order (bias then weight, last layer first) and their owners."""
    sizes = [size for _ in range(LAYERS) for size in (WIDTH, WIDTH * WIDTH)]
    owners = shard_owners(sizes, WORLD.size)
    owned = sum(size for size, owner in zip(sizes, owners) if owner == WORLD.rank)
    buckets_with_others = sum(any(owner != WORLD.rank for owner in owners[2 * layer:2 * layer + 2])
                              for layer in range(LAYERS))
    return owned, buckets_with_others


def gradient_memory_from_arrays(parameters):
    """Bytes of the distinct memory ranges the `.grad` arrays span (a view whose elements share one cell spans one)."""
    ranges = {byte_bounds(p.grad) for p in parameters}
    return sum(high - low for low, high in ranges)


def one_step(shard):
    """A synchronised backward (traced) and an optimizer step: (dp, optimizer, tracemalloc peak of backward)."""
    dp = DataParallel(build_model(), bucket_cap_mb=BUCKET_BYTES / 2**20, shard_optimizer_state=shard,
                      shared_memory=SHARED_MEMORY)
    optimizer = dp.optimizer(nn.optim.SGD, lr=0.1, momentum=0.9)
    x, y = global_batch(0)
    loss_fn = nn.MSELoss()
    loss_fn(dp(my_rows(x)), my_rows(y))
    dout = loss_fn.backward()
    with nn.PeakMemory() as peak:
        dp.backward(dout)
    optimizer.step()
    return dp, optimizer, peak.bytes


def memory_figures():
    owned, buckets_with_others = own_values()
    one_step(1)  # a process's first backward loads what is loaded on first use (scipy's BLAS): not traced below
    dp, optimizer, zero2_peak = one_step(2)
    _, _, zero1_peak = one_step(1)
    whole_bucket = BUCKET_BYTES
    flags_and_zeros = LAYERS * (2 * ITEM + ITEM)  # two flags and a zero element per bucket
    slots = 3 * whole_bucket if dp.allreduce_kind == "shared memory reduce-scatter" else 0
    return {
        "rank": WORLD.rank,
        "buckets": len(dp.buckets),
        "own_bytes": owned * ITEM,
        "zero_elements_bytes": buckets_with_others * ITEM,
        "from_arrays": gradient_memory_from_arrays(dp.parameters()),
        "memory_report": nn.memory_report(dp.parameters(), optimizer).gradients,
        "held": dp.gradient_sync.held_bytes,
        "kind": dp.allreduce_kind,
        "slot_bytes": dp.gradient_sync.slot_bytes,
        "slot_bytes_expected": slots,
        "held_expected": owned * ITEM + flags_and_zeros + slots,
        "peak_held": dp.gradient_sync.peak_held_bytes,
        "peak_allowed": owned * ITEM + flags_and_zeros + 3 * whole_bucket,
        "traced_peak_beyond_zero1": zero2_peak - zero1_peak,
        "traced_allowed": 3 * whole_bucket + TRACED_SLACK,
        "whole_gradients": LAYERS * whole_bucket,
        "others_read_zero": all(not p.grad.any() for p in dp.parameters() if dp.owner_of[id(p)] != WORLD.rank),
    }


def accumulated_training(strategy_of, steps=3):
    """Train `steps` steps of two micro-batches each, the first backward without sync; returns the model."""
    model, dp = strategy_of()
    optimizer = dp.optimizer(nn.optim.SGD, lr=0.1, momentum=0.9) if dp else nn.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.MSELoss()
    for step in range(steps):
        optimizer.zero_grad(set_to_none=step % 2 == 1)
        for micro in range(2):
            x, y = global_batch(10 * step + micro)
            if dp is None:
                loss_fn(model(x), y)
                model.backward(loss_fn.backward(), input_grad=False)
                continue
            loss_fn(dp(my_rows(x)), my_rows(y))
            if micro == 0:
                with dp.no_sync():
                    dp.backward(loss_fn.backward())
            else:
                dp.backward(loss_fn.backward())
        if dp is not None and WORLD.size > 1:
            assert dp.gradient_sync.held_bytes < dp.gradient_sync.peak_held_bytes, "buckets not released after sync"
        optimizer.step()
    return model


def main():
    figures = WORLD.gather(memory_figures(), root=0)
    if WORLD.rank == 0:
        print("ZERO2-GRADIENTS " + json.dumps(figures), flush=True)

    def zero2():
        model = build_model()
        return model, DataParallel(model, bucket_cap_mb=BUCKET_BYTES / 2**20, shard_optimizer_state=2,
                                   shared_memory=SHARED_MEMORY)

    trained = accumulated_training(zero2)
    reference = accumulated_training(lambda: (build_model(), None))
    difference = max(float(numpy.abs(p.data - q.data).max())
                     for p, q in zip(trained.parameters(), reference.parameters()))
    difference = WORLD.allreduce(difference, op=MPI.MAX)
    assert difference < TOLERANCE, difference
    if WORLD.rank == 0:
        print(f"ZERO2-ACCUMULATION max_abs_diff={difference:.1e}", flush=True)


if __name__ == "__main__":
    main()
