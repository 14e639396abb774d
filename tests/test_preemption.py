"""Preemption's agreement under real mpiexec: a signal on one rank stops every rank, for one small non-blocking
allreduce a step."""
from __future__ import annotations

import re

import pytest

from mpi_launch import run_mpi

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("ranks", [2, 4])
def test_a_signal_on_the_last_rank_is_agreed_by_every_rank_one_check_later_with_one_integer_allreduce(ranks):
    result = run_mpi("preemption_agreement.py", ranks, timeout=60)
    agreed = re.findall(r"PREEMPTION-OK rank=(\d) SIGUSR1 iallreduce of 1", result.stdout)
    assert sorted(agreed) == [str(rank) for rank in range(ranks)], result.stdout
