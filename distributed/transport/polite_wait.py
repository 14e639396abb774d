"""Wait for MPI requests without spinning the processor away from the ranks being waited for."""
from __future__ import annotations

import os
from typing import Sequence

from mpiprop.distributed.transport.request import Request, describe, poll_all
from mpiprop.distributed.reliability.waits import ranks_of_all, waiting_in


def wait_politely(requests: Sequence[Request]) -> None:
    """Wait until every request completed, yielding the processor between polls.

    A blocking MPI wait spins at full speed; when ranks outnumber cores (a laptop, a CI
    runner) the spinning rank steals time from the very rank it is waiting for. Polling
    with `MPI_Test` and `sched_yield` in between costs microseconds on an idle core.
    """
    if poll_all(requests):
        return
    with waiting_in(describe(requests), ranks_of_all([request.ranks for request in requests])):
        while not poll_all(requests):
            os.sched_yield()
