"""The peer listener notices a rank on its node whose process ended without telling the others (os._exit,
killed): process_gone against real processes, and the listener's bookkeeping on one rank."""
import os
import subprocess
import sys
import time

from mpi4py import MPI

from mpiprop.distributed.reliability.peer_listener import PeerListener, process_gone


def ended_process(reaped: bool) -> int:
    """The id of a process that has exited: reaped by this one, or left a zombie."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    if reaped:
        child.wait()
    else:
        while subprocess.run(["ps", "-o", "stat=", "-p", str(child.pid)], capture_output=True,
                             text=True).stdout.strip()[:1] not in ("Z", ""):
            time.sleep(0.01)
    return child.pid


def test_a_running_process_is_not_gone_and_an_ended_one_is_even_before_it_is_reaped():
    assert not process_gone(os.getpid())
    assert process_gone(ended_process(reaped=True))
    assert process_gone(ended_process(reaped=False))


def test_a_local_rank_whose_process_ended_counts_as_departed_without_a_notice():
    listener = PeerListener(MPI.COMM_SELF.Dup())  # not started: its bookkeeping only
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        listener.local_pids = {1: alive.pid, 2: ended_process(reaped=True)}
        listener._notice_vanished_local_ranks()
        assert set(listener.departed) == {2} and listener.vanished == {2}
        alive.kill()
        alive.wait()
        listener._notice_vanished_local_ranks()
        assert set(listener.departed) == {1, 2} and listener.vanished == {1, 2}
    finally:
        alive.kill()
        listener.comm.Free()
