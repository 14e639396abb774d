"""Each rank's listener on a private copy of COMM_WORLD: it hears which ranks left and answers where it waits."""
from __future__ import annotations

import atexit
import os
import sys
import threading
import time

from mpiprop.distributed.reliability.abort import abort_job
from mpiprop.distributed.reliability.shared_memory_files import remember_local_peers
from mpiprop.distributed.reliability.waits import current_wait, current_wait_among
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.distributed.transport.mpi_library import (mpi_finalized, processor_name, threads_can_talk,
                                                       world_rank_and_size)
from mpiprop.distributed.transport.request import Request, poll_all

DEPARTURE_TAG, QUESTION_TAG, ANSWER_TAG = 1, 2, 3
LISTEN_EVERY_S = 0.1
DEPARTURE_GRACE_S = 3.0  # a wait that outlasts a departure by this much cannot be one the leaver took part in
DEPARTED_EXIT_CODE = 5
NOTICE_WITHIN_S = 1.0
EVERY_RANK_CALLS = ("A collective call must run on every rank of its communicator: one made on some ranks only "
                    "(trainer.evaluate or trainer.fit, a strategy's train_step, dp.backward, a checkpoint's save or "
                    "load under `if rank == 0:`) waits for the others forever")

_listener: "PeerListener | None" = None


class PeerListener:
    """The daemon thread, and what it has heard, on a duplicate of COMM_WORLD that nothing else uses.

    A rank that ends its program (the script's end, `sys.exit` with any status) tells every
    other rank before MPI finalizes (`announce_departure`, run at exit). A rank on the same
    node whose process is gone without that notice (`os._exit`, killed) is noticed by its
    process id (`local_pids`), as the launcher does not always end the job then. A rank that,
    after either, waits DEPARTURE_GRACE_S in a communication that rank takes part in (the library's, or
    the user's inside `waiting_in`, whose communicator's ranks are known or else taken to be all) can
    never complete it, so it aborts the job naming the rank that left. The
    stall watchdog asks every rank where it is (`ask_where_everyone_is`), to name the rank that
    stopped arriving rather than one of those waiting for it.

    Args:
        comm: a clone of COMM_WORLD used by nothing else.
    """

    def __init__(self, comm: Communicator):
        self.comm, self.rank, self.size = comm, comm.rank, comm.size
        self.departed: dict[int, float] = {}  # rank -> monotonic time its notice arrived, or its process was gone
        self.vanished: set[int] = set()  # departed ranks whose process ended without a notice
        self.local_pids: dict[int, int] = {}  # the other ranks on this node: rank -> process id
        self.answers: dict[int, str] = {}
        self._questions: list[Request] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="mpiprop-peer-listener", daemon=True)

    def start(self) -> "PeerListener":
        self._thread.start()
        return self

    def _listen(self) -> None:
        while not self._stopped.wait(LISTEN_EVERY_S) and not mpi_finalized():
            while not self._stopped.is_set() and (waiting := self.comm.probe()) is not None:
                self._handle(*waiting)
            self._notice_vanished_local_ranks()
            self._abort_if_waiting_for_departed()

    def _handle(self, source: int, tag: int) -> None:
        message = self.comm.recv_object(source, tag)
        if tag == DEPARTURE_TAG:
            self.departed[source] = time.monotonic()
        elif tag == QUESTION_TAG:
            self.comm.send_object(where_this_rank_is(), source, ANSWER_TAG)
        elif tag == ANSWER_TAG:
            self.answers[source] = message

    def _notice_vanished_local_ranks(self) -> None:
        for rank, pid in self.local_pids.items():
            if rank not in self.departed and process_gone(pid):
                self.departed[rank] = time.monotonic()
                self.vanished.add(rank)

    def _abort_if_waiting_for_departed(self) -> None:
        """Abort when the wait in progress has lasted DEPARTURE_GRACE_S since a rank taking part in it left."""
        waiting = current_wait_among()
        if not self.departed or waiting is None:
            return
        operation, waited, ranks = waiting
        departed = [(rank, noticed) for rank, noticed in self.departed.items() if ranks is None or rank in ranks]
        if not departed:
            return
        leaver, noticed = min(departed, key=lambda item: item[1])
        if min(waited, time.monotonic() - noticed) >= DEPARTURE_GRACE_S:
            how = ("its process ended without finishing the program: os._exit, or killed" if leaver in self.vanished
                   else "its program ended or called sys.exit")
            abort_job(f"rank {self.rank}: rank {leaver} has left the job ({how}) while rank {self.rank} waits for "
                      f"it in {operation} ({waited:.1f} s); aborting all {self.size} ranks. {EVERY_RANK_CALLS}",
                      exit_code=DEPARTED_EXIT_CODE)

    def ask_where_everyone_is(self, timeout_s: float) -> dict[int, str]:
        """Ask every other rank where it is.

        Args:
            timeout_s: how long to wait for the answers.

        Returns:
            Each answering rank's `where_this_rank_is`, by rank; ranks that did not answer in time are absent.
        """
        self.answers.clear()
        self._questions = [self.comm.isend_object(None, rank, QUESTION_TAG)
                           for rank in range(self.size) if rank != self.rank]
        deadline = time.monotonic() + timeout_s
        while len(self.answers) < self.size - 1 and time.monotonic() < deadline:
            time.sleep(LISTEN_EVERY_S / 2)
        return dict(self.answers)

    def announce_departure(self) -> None:
        """Stop listening, then tell every other rank that this one is leaving (within NOTICE_WITHIN_S)."""
        self._stopped.set()
        self._thread.join(NOTICE_WITHIN_S)
        if mpi_finalized():  # the program finalized MPI itself
            return
        requests = [self.comm.isend_object(None, rank, DEPARTURE_TAG)
                    for rank in range(self.size) if rank != self.rank]
        deadline = time.monotonic() + NOTICE_WITHIN_S
        while not poll_all(requests) and time.monotonic() < deadline:
            time.sleep(0.01)


def process_gone(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie not yet reaped by its parent counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:  # no /proc here
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def where_this_rank_is() -> str:
    """"waits N s in OPERATION", or "is not communicating (at FILE:LINE in FUNCTION)" for the main thread."""
    waiting = current_wait()
    if waiting is not None:
        return f"waits {waiting[1]:.1f} s in {waiting[0]}"
    frame = sys._current_frames().get(threading.main_thread().ident)
    where = f"at {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}" if frame else "ending"
    return f"is not communicating ({where})"


def start_peer_listener() -> PeerListener | None:
    """Start this rank's listener (collective over COMM_WORLD: every rank calls it, in `mpiprop.distributed.start()`).

    It also learns the process ids of the ranks on this node, whose files in /dev/shm an
    aborting rank removes and whose end it watches.

    Nothing starts in a job of one rank, or where MPI was not initialised with MPI_THREAD_MULTIPLE
    (the listener talks while the main thread waits). Calling it again returns the running listener.
    """
    global _listener
    if _listener is not None or world_rank_and_size()[1] == 1 or not threads_can_talk():
        return _listener
    _listener = PeerListener(Communicator(use_nccl=False)).start()
    ranks = _listener.comm.allgather_object((processor_name(), os.getpid()))
    local = {rank: pid for rank, (node, pid) in enumerate(ranks) if node == processor_name()}
    remember_local_peers(list(local.values()))
    _listener.local_pids = {rank: pid for rank, pid in local.items()  # those this process can see
                            if rank != _listener.rank and not process_gone(pid)}
    atexit.register(_listener.announce_departure)  # runs before mpi4py's MPI_Finalize, registered earlier
    return _listener


def running_listener() -> PeerListener | None:
    """The listener `start_peer_listener` started, or None."""
    return _listener
