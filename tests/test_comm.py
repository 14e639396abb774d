"""Communicator, host staging, helpers and the abort handler: single-process units and real mpiexec runs."""
import sys

import numpy
import pytest
from mpi4py import MPI

from mpiprop import distributed
from mpiprop.distributed import Communicator, average_metrics
from mpiprop.distributed.reliability.abort import format_rank_traceback
from mpiprop.distributed.transport.request import wait_all
from mpiprop.distributed.transport.staging import must_stage, receive_buffer, send_buffer
from mpiprop.network.backend import to_numpy
from mpi_launch import run_mpi


# --- host staging, exercised with numpy standing in for GPU memory -------------------------------
def test_must_stage_follows_device_contiguity_and_force():
    contiguous = numpy.zeros((3, 4))
    assert not must_stage(contiguous, cuda_aware=False)
    assert must_stage(contiguous, cuda_aware=False, force=True)
    assert must_stage(contiguous[:, 1], cuda_aware=True)


def test_send_buffer_is_a_snapshot_when_staged():
    array = numpy.arange(4.0)
    staged = send_buffer(array, stage=True)
    array[0] = 99.0
    assert staged[0] == 0.0 and staged is not array
    assert send_buffer(array, stage=False) is array


def test_receive_buffer_copies_back_only_when_asked():
    array = numpy.arange(6.0).reshape(2, 3)[:, ::2]  # non-contiguous destination
    host, copy_back = receive_buffer(array, stage=True, keep_contents=True)
    numpy.testing.assert_array_equal(host, [[0.0, 2.0], [3.0, 5.0]])
    host += 10.0
    assert array[0, 0] == 0.0
    copy_back()
    numpy.testing.assert_array_equal(array, [[10.0, 12.0], [13.0, 15.0]])
    direct, nothing = receive_buffer(numpy.zeros(2), stage=False, keep_contents=False)
    assert nothing is None and direct.shape == (2,)


@pytest.mark.parametrize("force_host_staging", [False, True])
def test_single_rank_operations_are_identities(force_host_staging):
    comm = Communicator(force_host_staging=force_host_staging)
    values = numpy.arange(5, dtype=numpy.float32)
    assert comm.allreduce(values) is values
    numpy.testing.assert_array_equal(values, numpy.arange(5))
    column = numpy.arange(6.0).reshape(3, 2)[:, 1]
    requests = [comm.iallreduce(column, "max"), comm.iallreduce(values)]
    wait_all(requests)
    assert all(request.done for request in requests)
    numpy.testing.assert_array_equal(column, [1.0, 3.0, 5.0])
    received = comm.sendrecv(numpy.full(3, 7), 0, numpy.zeros(3, dtype=numpy.int64), 0)
    numpy.testing.assert_array_equal(received, [7, 7, 7])
    assert (comm.rank, comm.size, comm.local_rank, comm.is_main) == (0, 1, 0, True)
    comm.free()


def test_arrays_of_each_module_go_through_mpi_and_back(xp):
    """With cupy (GPU present) the copies through host memory or the CUDA-aware path run for real."""
    comm = Communicator()
    values = xp.arange(6, dtype=xp.float32).reshape(2, 3)
    assert comm.allreduce(values) is values
    comm.bcast(values[:, 1])
    received = comm.sendrecv(values * 2, 0, xp.zeros_like(values), 0)
    assert type(received) is type(values)
    numpy.testing.assert_array_equal(to_numpy(received), numpy.arange(6).reshape(2, 3) * 2)


def test_library_messages_do_not_meet_user_messages():
    comm = Communicator()
    user_send = MPI.COMM_WORLD.isend("user", dest=0, tag=3)
    library_send = comm.isend(numpy.array([5.0]), dest=0, tag=3)
    assert comm.recv(numpy.zeros(1), source=0, tag=3)[0] == 5.0
    assert MPI.COMM_WORLD.recv(source=0, tag=3) == "user"
    user_send.wait()
    library_send.wait()


def test_invalid_arguments_name_the_fix():
    comm = Communicator()
    with pytest.raises(ValueError, match="root=1 is not a rank"):
        comm.bcast(numpy.zeros(2), root=1)
    with pytest.raises(ValueError, match="unknown reduction 'mean'"):
        comm.allreduce(numpy.zeros(2), "mean")
    with pytest.raises(TypeError, match="numpy or cupy array"):
        comm.allreduce([1.0, 2.0])
    with pytest.raises(TypeError, match="mpi4py communicator"):
        Communicator("world")


def test_helpers_in_one_process():
    assert (distributed.rank(), distributed.size(), distributed.is_main_rank()) == (0, 1, True)
    assert distributed.local_rank(Communicator()) == 0
    assert average_metrics({"loss": 0.5, "accuracy": 0.25}, weights=4) == {"loss": 0.5, "accuracy": 0.25}
    with pytest.raises(ValueError, match="weight 0 on every rank"):
        average_metrics({"loss": 0.5}, weights=0)


def test_traceback_lines_carry_the_rank():
    try:
        raise KeyError("missing")
    except KeyError:
        text = format_rank_traceback(3, *sys.exc_info())
    lines = text.splitlines()
    assert lines[0] == "rank 3: Traceback (most recent call last):"
    assert lines[-1] == "rank 3: KeyError: 'missing'"
    assert all(line.startswith("rank 3: ") for line in lines)


def test_abort_handler_installs_once_and_uninstalls():
    was_installed = distributed.abort_handler_installed()
    distributed.uninstall_abort_handler()
    plain_hook = sys.excepthook
    try:
        distributed.install_abort_handler()
        installed_hook = sys.excepthook
        distributed.install_abort_handler()
        assert sys.excepthook is installed_hook is not plain_hook
        distributed.uninstall_abort_handler()
        assert sys.excepthook is plain_hook
    finally:
        if was_installed:
            distributed.install_abort_handler()


@pytest.mark.mpi
# --- real mpiexec ---------------------------------------------------------------------------------
@pytest.mark.parametrize("ranks", [2, 4])
def test_communicator_under_mpiexec(ranks):
    result = run_mpi("dp_comm.py", ranks)
    for rank in range(ranks):
        assert f"rank {rank} ok" in result.stdout, result.stdout + result.stderr

