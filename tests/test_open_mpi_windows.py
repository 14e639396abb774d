"""Under Open MPI, DataParallel sums in a shared window only when Open MPI's UCX one-sided component is left out."""
from __future__ import annotations

import sys
import textwrap

import pytest

from mpi_launch import REPOSITORY_ROOT, local_launcher, mpi_env, run_bounded
from mpiprop.distributed.transport.shared_memory_room import leaves_out_ucx
from mpiprop.launch.mpiexec import OPENMPI, OPENMPI_WITHOUT_UCX_WINDOWS

REPORT_KIND = textwrap.dedent("""
    import mpiprop.distributed
    import mpiprop.network as nn
    dp = mpiprop.distributed.DataParallel(nn.Sequential(nn.Linear(4, 3)))
    print(f"rank {dp.rank}: {dp.allreduce_kind}", flush=True)
""")


@pytest.mark.parametrize("components, left_out", [
    ("", False), ("^ucx", True), ("^rdma,ucx", True), ("^rdma", False), ("sm,rdma", True), ("sm,ucx", False),
    ("ucx", False), (" ^ ucx ", True)])
def test_which_component_selections_leave_out_ucx(components, left_out):
    assert leaves_out_ucx(components) == left_out


@pytest.mark.mpi
@pytest.mark.parametrize("leave_out_ucx", [True, False])
def test_data_parallel_under_open_mpi_prints_no_error_either_way(tmp_path, leave_out_ucx):
    launcher = local_launcher()
    if launcher.flavour != OPENMPI:
        pytest.skip(f"needs Open MPI; this mpiexec is {launcher.flavour}")
    (tmp_path / "kind.py").write_text(REPORT_KIND)
    prefix = launcher.prefix(2)
    if not leave_out_ucx:
        start = prefix.index(OPENMPI_WITHOUT_UCX_WINDOWS[0])
        del prefix[start:start + len(OPENMPI_WITHOUT_UCX_WINDOWS)]
    completed = run_bounded([*prefix, sys.executable, str(tmp_path / "kind.py")], 120, env=mpi_env(),
                            cwd=REPOSITORY_ROOT)
    assert completed.returncode == 0, completed.stderr
    kind = "shared memory" if leave_out_ucx else "mpi"
    assert sorted(completed.stdout.split("\n")[:2]) == [f"rank 0: {kind}", f"rank 1: {kind}"], completed.stdout
    assert "rror" not in completed.stderr, completed.stderr
