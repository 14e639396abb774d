"""A rank ended by SIGTERM or SIGHUP says so, removes the job's /dev/shm files, then dies of that signal."""
from __future__ import annotations

import os
import signal
import threading
from typing import Any

from mpiprop.distributed.reliability.last_words import write_last_words
from mpiprop.distributed.reliability.shared_memory_files import remove_job_files

ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def report_ending_signals(rank: int) -> None:
    """Install, in the main thread, handlers that end this rank on SIGTERM or SIGHUP as before, with a line first.

    The line reads "rank R: ended by SIGTERM". Handlers the program installed already are kept;
    Trainer.fit's preemption replaces these during training and restores them after.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in ENDING_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _ending_handler(rank))


def _ending_handler(rank: int):
    def end(signum: int, frame: Any) -> None:
        write_last_words(f"rank {rank}: ended by {signal.Signals(signum).name}")
        remove_job_files()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    end.ends_the_process = True  # the default's behaviour with a line first: preemption may replace it
    return end
