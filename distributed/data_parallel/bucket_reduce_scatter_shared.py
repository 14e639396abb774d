"""SharedMemoryBucketReduceScatter: ZeRO-2's reduce-scatter summed in a ring of slots shared by a node's ranks.

MPI's reduce-scatter between processes of one node copies every bucket through MPI's own
shared cells. Here, during a synchronised backward, a bucket's whole gradient space (`full`)
is a slot of a window every rank of the node can read (GradientSlots, SLOTS per rank, made
once): when all ranks have announced a bucket final (a non-blocking barrier), each rank adds
every rank's values of its own run into `own`, reading its peers' slots in place. Nothing
moves through MPI but barriers, and a rank holds at most SLOTS whole buckets in slots.

Every rank makes the same choice for every bucket, from what is the same on every rank: the
bucket's index, the sequence of calls and whether the backward synchronises, never timing.
Bucket `b` takes slot `b % SLOTS` when backward first writes it (or when it is launched) in a
synchronised backward, if the slot is empty or its occupant has been launched; a whole bucket
made outside (under `no_sync()`, or kept at construction) is copied in then. Otherwise (the
occupant not launched yet, or no synchronised backward) the bucket stays in memory of its own
and is reduce-scattered with MPI, as MpiBucketReduceScatter does.

Peers read a rank's slot while summing their runs, so a slot is taken again only once every
rank has finished reading it: after summing its run of a bucket a rank starts a non-blocking
barrier ("read") on a communicator of its own, and before the slot's next bucket is written
it waits for the occupant's read barrier. Runs are summed in launch order, so the read
barriers start in the same order on every rank. Before blocking on anything of a bucket (its
announcement, its MPI reduce-scatter, its read barrier) a rank sums its runs of every bucket
launched before it (waiting for their announcements): what the earliest blocked wait of the
job needs is then done or under way on every rank, so no wait waits on another in a circle.
`finish` sums what is left and waits for every read barrier, so each backward starts with
empty slots. `SharedWindow.sync` around every barrier orders the loads and stores, as in
bucket_allreduce_shared. Every wait is a watched `Request.wait`/`wait_all`.
"""
from __future__ import annotations

from typing import Sequence

from mpiprop.distributed.data_parallel.bucket_allreduce_shared import CHUNK_BYTES
from mpiprop.distributed.data_parallel.bucket_reduce_scatter import IN_FLIGHT, MpiBucketReduceScatter
from mpiprop.distributed.data_parallel.gradient_slots import GradientSlots
from mpiprop.distributed.data_parallel.sharded_gradient_bucket import ShardedGradientBucket
from mpiprop.distributed.reliability.timeline import span
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.distributed.transport.request import Request, wait_all

SLOTS = IN_FLIGHT + 1  # whole buckets per rank in the window: as many as MPI's reduce-scatter holds at once


class SharedMemoryBucketReduceScatter(MpiBucketReduceScatter):
    """Reduce-scatters sharded buckets in GradientSlots where it can (see the module), else with MPI.

    Construction is collective; only for ranks on one node (see `node_groups`).

    Args:
        buckets: the sharded buckets, in the order their gradients become final.
        comm: the data-parallel ranks, all on one node.
        slots: the window of slots, made over `buckets` and `comm`.
    """

    kind = "shared memory reduce-scatter"

    def __init__(self, buckets: Sequence[ShardedGradientBucket], comm: Communicator, slots: GradientSlots):
        super().__init__(buckets, comm)
        self.slots = slots
        self._read_comm = comm.clone()
        self._synchronising = False
        self._placed: list[bool] = []
        self._occupant: list[int | None] = []
        self._in_slot_order: list[int] = []
        self._summed = 0
        self._position: list[int | None] = []  # of each bucket in this backward's launches
        self._launches = 0
        self._read: list[Request | None] = []
        self._announcements = [f"announcement of gradient bucket {index} (shared-memory reduce-scatter)"
                               for index in range(len(self.buckets))]
        self._readings = [f"peers' reading of gradient bucket {index}'s slots" for index in range(len(self.buckets))]

    def start(self) -> None:
        super().start()
        self._synchronising = True
        self._placed = [False] * len(self.buckets)
        self._occupant = [None] * self.slots.count
        self._in_slot_order, self._summed = [], 0
        self._position, self._launches = [None] * len(self.buckets), 0
        self._read = [None] * len(self.buckets)

    def make_whole(self, index: int) -> None:
        """Make bucket `index` whole: in its slot when it may take it (see the module), else in memory of its own."""
        bucket = self.buckets[index]
        if not self._synchronising or self._placed[index]:
            bucket.materialize()
            return
        self._placed[index] = True
        if not self._take_slot(index):
            bucket.materialize()
            return
        space = self.slots.space(self.comm.rank, index)
        if bucket.full is None:
            bucket.materialize(space)
        else:
            bucket.move_into(space)

    def _take_slot(self, index: int) -> bool:
        """Whether bucket `index` takes its slot; if so, once every rank has read the slot's previous bucket."""
        slot = self.slots.slot_of(index)
        occupant = self._occupant[slot]
        if occupant is not None and not self.launched(occupant):
            return False
        if occupant is not None:
            self._sum_runs_launched_before(self._position[occupant] + 1)
            self._read[occupant].wait()
            self.slots.sync()
        self._occupant[slot] = index
        return True

    def launch(self, index: int) -> None:
        """Announce bucket `index` final when it is in its slot (after a Sync), else reduce-scatter it with MPI."""
        self.make_whole(index)
        self._position[index] = self._launches
        self._launches += 1
        bucket = self.buckets[index]
        if not bucket.full_is_lent:
            super().launch(index)
            return
        self._trace(index, int(bucket.full.nbytes))
        self.slots.sync()
        self._requests[index] = self.comm.ibarrier(what=self._announcements[index])
        self._in_slot_order.append(index)

    def progress(self) -> None:
        """Advance MPI's reduce-scatters, and sum this rank's runs of the buckets every rank has announced, in order."""
        super().progress()
        while self._summed < len(self._in_slot_order) and self._requests[self._in_slot_order[self._summed]].test():
            self._sum_next_run()

    def finish(self) -> int:
        """Sum what is left, wait until every rank has read every slot; returns the bytes of the buckets."""
        with span("shared-memory reduce-scatter"):
            self._sum_runs_launched_before(self._launches)
            wait_all([request for request in self._requests if request is not None])
            wait_all([read for read in self._read if read is not None])
            self.slots.sync()
        self._synchronising = False
        return self._finish_after_gradients()

    def _wait_for_reduce_scatter(self, index: int) -> None:
        self._sum_runs_launched_before(self._position[index])
        super()._wait_for_reduce_scatter(index)

    def _sum_runs_launched_before(self, position: int) -> None:
        """Sum this rank's runs of the buckets in slots launched before the `position`-th launch, in launch order."""
        while (self._summed < len(self._in_slot_order) and
               self._position[self._in_slot_order[self._summed]] < position):
            self._requests[self._in_slot_order[self._summed]].wait()
            self._sum_next_run()

    def _sum_next_run(self) -> None:
        """Add every rank's values of this rank's run of the next announced bucket into `own`, release the bucket,
        and start the barrier that tells the peers this rank has read their slots.

        In pieces of CHUNK_BYTES, so that each piece of the sum is still in cache when the next rank's is added.
        """
        index = self._in_slot_order[self._summed]
        bucket = self.buckets[index]
        self.slots.sync()
        run = bucket.own_slice
        spaces = [self.slots.space(rank, index) for rank in range(self.comm.size)]
        step = max(1, CHUNK_BYTES // bucket.dtype.itemsize)
        for start in range(run.start, run.stop, step):
            piece = slice(start, min(start + step, run.stop))
            total = bucket.own[piece.start - run.start:piece.stop - run.start]
            total[...] = spaces[0][piece]
            for space in spaces[1:]:
                total += space[piece]
        bucket.release()
        self.slots.sync()
        self._read[index] = self._read_comm.ibarrier(what=self._readings[index])
        self._summed += 1
