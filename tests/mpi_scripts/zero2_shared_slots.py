"""ZeRO-2 reduce-scattered through shared slots: many small buckets and no_sync steps, against one process.

    mpiexec -n N python zero2_shared_slots.py [--slow-readers] [--tied]

Ten Linear layers of widths 5 to 9 in float64, buckets of about one layer (BUCKET_BYTES), so the
three slots of each rank are taken again and again in every backward, and some buckets hold
gradients of two owners. Trains STEPS SGD steps on global batches of ROWS_PER_RANK rows per rank:
odd steps first accumulate a micro-batch under no_sync (its whole buckets in memory of their own,
moved into slots by the synchronised backward), even steps are one synchronised backward each, after
which no gradient memory beyond the own gradients and the slots may have been held. The weights must
equal one process's trained on the same global micro-batches. With --slow-readers each rank sleeps
before summing its run of every bucket whose index it equals modulo the ranks, so the others run
ahead and would overwrite a slot that a slow rank still reads, were a slot taken again too early.
With --tied the first Linear (square) is applied once more at the end: its bucket, written first and
final last, holds its slot for the whole backward, so the buckets that would take that slot stay in
memory of their own and reduce-scatter with MPI in the same backward as the others' slots.
Rank 0 prints "ZERO2-SLOTS kind=K buckets=B shared_buckets=S ranks=N max_abs_diff=D" (S over all steps).
"""
import sys
import time

import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import DataParallel
from mpiprop.distributed.data_parallel.bucket_reduce_scatter_shared import SharedMemoryBucketReduceScatter

WORLD = MPI.COMM_WORLD
WIDTHS = (7, 9, 5, 8, 6, 9, 7, 5, 8, 6, 7)
ROWS_PER_RANK, STEPS = 3, 6
BUCKET_BYTES = 200  # a bucket closes once it holds 200 bytes: a weight, or biases and weights together
SLOW_READER_SECONDS = 0.01
TOLERANCE = 1e-6


TIED = "--tied" in sys.argv[1:]


def build_model():
    nn.manual_seed(4)
    layers = []
    for width_in, width_out in zip(WIDTHS, WIDTHS[1:]):
        layers += [nn.Linear(width_in, width_out), nn.Tanh()]
    if TIED:
        layers += [nn.Linear(WIDTHS[-1], WIDTHS[0]), nn.Tanh(), layers[0], nn.Tanh()]
    return nn.Sequential(*layers[:-1]).to(dtype=numpy.float64)


def global_batch(step, micro):
    rng = numpy.random.default_rng(100 * step + micro)
    rows = ROWS_PER_RANK * WORLD.size
    return rng.standard_normal((rows, WIDTHS[0])), rng.standard_normal((rows, WIDTHS[1] if TIED else WIDTHS[-1]))


def my_rows(array):
    return array[WORLD.rank * ROWS_PER_RANK:(WORLD.rank + 1) * ROWS_PER_RANK]


def make_readers_slow():
    """Rank r sleeps before summing its run of bucket b when b % ranks == r (the others run ahead)."""
    sum_next_run = SharedMemoryBucketReduceScatter._sum_next_run

    def slow_sum_next_run(self):
        if self._in_slot_order[self._summed] % WORLD.size == WORLD.rank:
            time.sleep(SLOW_READER_SECONDS)
        sum_next_run(self)

    SharedMemoryBucketReduceScatter._sum_next_run = slow_sum_next_run


def each_once(parameters):
    """The parameters, a shared one once (a Sequential lists a layer's parameters at each place it holds it)."""
    return list({id(p): p for p in parameters}.values())


def micro_batches(step):
    return 2 if step % 2 == 1 else 1


def train_one_process():
    model = build_model()
    optimizer = nn.optim.SGD(each_once(model.parameters()), lr=0.1, momentum=0.9)
    loss_fn = nn.MSELoss()
    for step in range(STEPS):
        optimizer.zero_grad()
        for micro in range(micro_batches(step)):
            x, y = global_batch(step, micro)
            loss_fn(model(x), y)
            model.backward(loss_fn.backward() / micro_batches(step), input_grad=False)
        optimizer.step()
    return model


def train_zero2():
    model = build_model()
    dp = DataParallel(model, bucket_cap_mb=BUCKET_BYTES / 2**20, shard_optimizer_state=2)
    optimizer = dp.optimizer(nn.optim.SGD, each_once(dp.parameters()), lr=0.1, momentum=0.9)
    loss_fn = nn.MSELoss()
    shared_buckets = 0
    for step in range(STEPS):
        optimizer.zero_grad()
        for micro in range(micro_batches(step)):
            x, y = global_batch(step, micro)
            loss_fn(dp(my_rows(x)), my_rows(y))
            dout = loss_fn.backward() / micro_batches(step)
            if micro + 1 < micro_batches(step):
                with dp.no_sync():
                    dp.backward(dout)
                continue
            dp.backward(dout)
        shared_buckets += len(dp.gradient_sync.allreduce._in_slot_order)
        if micro_batches(step) == 1 and not TIED:
            sync = dp.gradient_sync
            assert sync.peak_held_bytes == sync.held_bytes, (step, sync.peak_held_bytes, sync.held_bytes)
        optimizer.step()
    return model, dp, shared_buckets


def main():
    if "--slow-readers" in sys.argv[1:]:
        make_readers_slow()
    trained, dp, shared_buckets = train_zero2()
    owners_per_bucket = [len({dp.owner_of[id(p)] for p in bucket.params}) for bucket in dp.buckets]
    assert len(dp.buckets) >= 3 * 3 and (TIED or max(owners_per_bucket) > 1), owners_per_bucket
    reference = train_one_process()
    difference = max(float(numpy.abs(p.data - q.data).max()) for p, q in zip(trained.parameters(),
                                                                             reference.parameters()))
    difference = WORLD.allreduce(difference, op=MPI.MAX)
    if WORLD.rank == 0:
        print(f"ZERO2-SLOTS kind={dp.allreduce_kind.replace(' ', '-')} buckets={len(dp.buckets)} "
              f"shared_buckets={shared_buckets} ranks={WORLD.size} max_abs_diff={difference:.1e}", flush=True)


if __name__ == "__main__":
    main()
