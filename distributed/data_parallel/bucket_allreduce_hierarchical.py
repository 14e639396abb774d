"""HierarchicalBucketAllreduce: sum gradient buckets within each node in shared memory, then between node leaders.

Across nodes, MPI's allreduce moves every rank's buffers over the network. Here the ranks of
a node first sum their buffers in a shared window (as SharedMemoryBucketAllreduce does), so
only one rank per node, its leader, joins the allreduce between nodes, with the node's sum;
the leader then writes the total into its node's buffers. Bucket by bucket: a rank that has
summed its slice of a bucket says so with a non-blocking barrier over its node (on a
communicator of their own, in bucket order); once all have, the leader starts that
bucket's allreduce between the leaders, in bucket order on every leader (MPI matches
collectives by order). Every rank ends with its leader's copy, and the leaders' allreduce
gives them all the same sum, so every rank holds bit-identical sums.
"""
from __future__ import annotations

from typing import Sequence

import numpy

from mpiprop.distributed.data_parallel.bucket_allreduce_shared import SharedMemoryBucketAllreduce
from mpiprop.distributed.reliability.timeline import span
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.distributed.transport.request import Request, wait_all


class HierarchicalBucketAllreduce(SharedMemoryBucketAllreduce):
    """Flat buffers of `sizes` elements of `dtypes`, summed over all nodes' ranks; construction is collective.

    Args:
        sizes: elements of each buffer.
        dtypes: float dtype of each buffer.
        node: the ranks of this rank's node (their buffers share one window).
        leaders: the first rank of every node, on those ranks; None on the others.
    """

    kind = "hierarchical"

    def __init__(self, sizes: Sequence[int], dtypes: Sequence[numpy.dtype], node: Communicator,
                 leaders: Communicator | None):
        super().__init__(sizes, dtypes, node)
        self.leaders = leaders
        # barriers of their own: MPI matches the node's barriers by order, and the announcements go in launch order
        self._summed_slices_comm = node.clone()
        self._slices_summed: list[Request] = []
        self._between_nodes: list[Request] = []

    def start(self) -> None:
        super().start()
        self._slices_summed, self._between_nodes = [], []

    def progress(self) -> None:
        """Sum announced slices, tell the node, and on a leader start the allreduces whose node sums are complete."""
        super().progress()
        self._announce_summed_slices()
        self._start_between_nodes(block=False)
        for request in self._between_nodes:
            if not request.done:
                request.test()

    def finish(self) -> int:
        """Sum what is left, reduce between the leaders, share the totals within the node; returns the bytes."""
        with span("hierarchical allreduce"):
            wait_all([ready for ready in self._requests if ready is not None])
            for index in range(len(self.buffers)):
                if not self._summed[index]:
                    self._sum_my_slice(index)
            self._announce_summed_slices()
            if self.leaders is not None:
                self._start_between_nodes(block=True)
                wait_all(self._between_nodes)
                self._write_totals_into_node_buffers()
            wait_all(self._slices_summed)
            self._window.sync()
            self.comm.barrier()
            self._window.sync()
        self._end_traces()
        return sum(int(buffer.nbytes) for buffer in self.buffers)

    def _announce_summed_slices(self) -> None:
        """A non-blocking barrier over the node per bucket whose slice this rank has summed, in bucket order."""
        while len(self._slices_summed) < len(self.buffers) and self._summed[len(self._slices_summed)]:
            index = len(self._slices_summed)
            self._window.sync()
            self._slices_summed.append(self._summed_slices_comm.ibarrier(
                what=f"node sum of gradient bucket {index} ({self.buffers[index].size} {self.buffers[index].dtype})"))

    def _start_between_nodes(self, block: bool) -> None:
        """On a leader, start the allreduce between nodes of each bucket whose node sum is complete, in bucket order."""
        if self.leaders is None:
            return
        while len(self._between_nodes) < len(self._slices_summed):
            node_summed = self._slices_summed[len(self._between_nodes)]
            if block:
                node_summed.wait()
            elif not node_summed.test():
                return
            self._window.sync()
            self._between_nodes.append(self.leaders.iallreduce(self.buffers[len(self._between_nodes)], "sum"))

    def _write_totals_into_node_buffers(self) -> None:
        for rank, buffers in enumerate(self._all_buffers):
            if rank != self.comm.rank:
                for mine, theirs in zip(self.buffers, buffers):
                    theirs[...] = mine
