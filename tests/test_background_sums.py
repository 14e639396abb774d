"""BackgroundSums and the rule that chooses it: a thread per rank only where every rank has a core to spare."""
import gc
import threading

import pytest

from mpiprop.distributed.data_parallel.background_sums import BackgroundSums, spare_core_per_rank
from mpiprop.distributed.transport.world import NodePlacement


@pytest.mark.parametrize("ranks, node_cores, rank_cores, blas_threads, expected", [
    (8, 16, 16, 1, True),    # a 16-core node, 8 ranks of one BLAS thread: 8 cores to spare
    (2, 2, 2, 1, False),     # 2 ranks on 2 cores: a thread would take turns with the math
    (8, 16, 1, 1, False),    # ranks bound to one core each by the launcher
    (8, 16, 16, 2, False),   # two BLAS threads per rank already fill the node
    (4, 16, 16, 3, True),
])
def test_a_thread_per_rank_only_with_a_core_to_spare_for_each(ranks, node_cores, rank_cores, blas_threads, expected):
    node = NodePlacement(local_rank=0, local_size=ranks, node_cores=node_cores, rank_cores=rank_cores)
    assert spare_core_per_rank(node, blas_threads) is expected


class Recorder:
    def __init__(self, failing: int | None = None, name: str = "test sums"):
        self.calls: list[tuple[int, str]] = []
        self.failing = failing
        self.sums = BackgroundSums(self.work, name)

    def work(self, index: int) -> None:
        if index == self.failing:
            raise ValueError(f"index {index} failed")
        self.calls.append((index, threading.current_thread().name))


def test_work_runs_in_order_on_its_own_thread_and_wait_returns_when_all_is_done():
    recorder = Recorder()
    for index in (2, 0, 1):
        recorder.sums.submit(index)
    recorder.sums.wait("test")
    assert recorder.calls == [(2, "test sums"), (0, "test sums"), (1, "test sums")]


def test_an_error_is_raised_by_wait_and_skips_the_rest_once():
    recorder = Recorder(failing=1)
    for index in (0, 1, 2):
        recorder.sums.submit(index)
    with pytest.raises(ValueError, match="index 1 failed"):
        recorder.sums.wait("test")
    assert [index for index, _ in recorder.calls] == [0]
    recorder.sums.submit(3)
    recorder.sums.wait("test")
    assert [index for index, _ in recorder.calls] == [0, 3]


def test_the_thread_ends_once_its_owner_is_collected():
    recorder = Recorder(name="collected owner's sums")
    recorder.sums.submit(0)
    recorder.sums.wait("test")
    [thread] = [thread for thread in threading.enumerate() if thread.name == "collected owner's sums"]
    del recorder
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive()
