"""Sums and gathers of large arrays through a window the ranks share: the numbers of MPI's own collectives."""
from __future__ import annotations

import pytest
from mpi4py import MPI

from mpiprop.distributed import Communicator


@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("one_sided", [None, "^ucx"], ids=["as launched", "without Open MPI's UCX windows"])
def test_shared_exchange_gives_mpis_sums_and_gathers(ranks, one_sided):
    from mpi_launch import run_mpi

    output = run_mpi("shared_exchange.py", ranks, timeout=180, env={"OMPI_MCA_osc": one_sided}).stdout
    assert "shared exchange: agrees with MPI" in output or "shared exchange: MPI only" in output, output
    if one_sided == "^ucx":
        assert "shared exchange: agrees with MPI" in output, output


def test_one_rank_shares_nothing():
    with Communicator(MPI.COMM_SELF) as alone:
        assert not alone.share_memory()
