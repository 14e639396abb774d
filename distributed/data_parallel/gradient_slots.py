"""GradientSlots: a ring of whole-bucket gradient spaces per rank, in one window every rank of a node can read."""
from __future__ import annotations

from typing import Sequence

import numpy

from mpiprop.distributed.data_parallel.bucket_allreduce_shared import ALIGNMENT
from mpiprop.distributed.data_parallel.sharded_gradient_bucket import ShardedGradientBucket
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.distributed.transport.shared_memory_room import room_shortage


def slot_count(buckets: int, slots: int) -> int:
    """Slots in the ring: `slots`, or fewer when there are fewer buckets."""
    return max(1, min(slots, buckets))


def slot_offsets(bucket_bytes: Sequence[int], slots: int) -> tuple[list[int], int]:
    """Byte offset of each slot in a rank's part of the window, and the part's bytes. Bucket `b` goes to
    slot `b % slots`, so each slot is as large as the largest of its buckets (on an ALIGNMENT boundary)."""
    sizes = [max(bucket_bytes[slot::slots], default=0) for slot in range(slots)]
    offsets, position = [], 0
    for size in sizes:
        offsets.append(position)
        position += -(-size // ALIGNMENT) * ALIGNMENT
    return offsets, max(position, ALIGNMENT)


def slots_shortage(buckets: Sequence[ShardedGradientBucket], slots: int, comm: Communicator) -> str | None:
    """Why the window of `GradientSlots(buckets, slots, comm)` would not fit on some rank's node, or None.
    Collective."""
    _, part = slot_offsets([bucket.gradient_size * bucket.dtype.itemsize for bucket in buckets],
                           slot_count(len(buckets), slots))
    return room_shortage(comm, comm.size * part, f"the shared gradient slots of {comm.size} ranks need",
                         "reduce-scattering gradients with MPI instead", "pass DataParallel(..., shared_memory=False)")


class GradientSlots:
    """`slot_count(len(buckets), slots)` whole gradient spaces per rank in one window shared by the ranks of `comm`.

    Bucket `b` may take slot `b % count`. `space(rank, b)` is rank `rank`'s slot of bucket `b`
    seen as `gradient_size` elements of the bucket's dtype: a rank writes its own, reads every
    rank's. The window is made once (collective; all ranks on one node) and stays until its communicator is freed.

    Args:
        buckets: the sharded buckets, the same on every rank.
        slots: slots per rank wanted.
        comm: the data-parallel ranks, all on one node.
    """

    def __init__(self, buckets: Sequence[ShardedGradientBucket], slots: int, comm: Communicator):
        self.count = slot_count(len(buckets), slots)
        offsets, self.nbytes = slot_offsets([bucket.gradient_size * bucket.dtype.itemsize for bucket in buckets],
                                            self.count)
        self._window = comm.allocate_shared(self.nbytes)
        memories = [self._window.memory(rank) for rank in range(comm.size)]
        self._spaces = [[numpy.frombuffer(memory, dtype=bucket.dtype, count=bucket.gradient_size,
                                          offset=offsets[index % self.count])
                         for index, bucket in enumerate(buckets)] for memory in memories]

    def slot_of(self, index: int) -> int:
        """The slot bucket `index` may take."""
        return index % self.count

    def space(self, rank: int, index: int) -> numpy.ndarray:
        """Rank `rank`'s slot of bucket `index`, as the bucket's whole gradient space."""
        return self._spaces[rank][index]

    def sync(self) -> None:
        """Order this rank's loads and stores of the window before what follows (around barriers)."""
        self._window.sync()
