"""mpiprop run: mpiexec command lines (literal), GPU binding, argument splitting and argument errors."""
from __future__ import annotations

import pytest

from mpiprop.launch import bootstrap, cli
from mpiprop.launch.mpiexec import (MPICH, OPENMPI, RunOptions, build_command, count_hosts, launch_warnings,
                            parse_flavour, threads_per_rank)

MPIEXEC, PYTHON = "/venv/bin/mpiexec", "/venv/bin/python"
THREADS_1 = ["-genv", "OMP_NUM_THREADS", "1", "-genv", "OPENBLAS_NUM_THREADS", "1", "-genv", "MKL_NUM_THREADS", "1"]


def command(options: RunOptions, flavour: str = MPICH, cores: int = 8, hosts: int = 1) -> list[str]:
    return build_command(options, mpiexec=MPIEXEC, flavour=flavour, python=PYTHON, cores=cores, hosts=hosts)


def test_plain_run_divides_cores_between_ranks():
    assert command(RunOptions(ranks=4, program=["train.py", "--lr", "0.1"])) == [
        MPIEXEC, "-n", "4",
        "-genv", "OMP_NUM_THREADS", "2", "-genv", "OPENBLAS_NUM_THREADS", "2", "-genv", "MKL_NUM_THREADS", "2",
        PYTHON, "-m", "mpiprop.launch.bootstrap", "train.py", "--lr", "0.1"]


def test_hostfile_gpus_threads_and_trace_with_mpich():
    options = RunOptions(ranks=8, program=["train.py"], hostfile="hosts", gpus_per_node=4, threads_per_rank=1,
                         trace="trace.json", stall_timeout=300.0)
    assert command(options, hosts=2) == [
        MPIEXEC, "-n", "8", "-f", "hosts", *THREADS_1,
        "-genv", "MPIPROP_GPUS_PER_NODE", "4", "-genv", "MPIPROP_TRACE", "trace.json",
        "-genv", "MPIPROP_STALL_TIMEOUT", "300",
        PYTHON, "-m", "mpiprop.launch.bootstrap", "train.py"]


def test_open_mpi_flags():
    options = RunOptions(ranks=2, program=["-m", "examples.mnist"], hostfile="hosts", gpus_per_node=2)
    assert command(options, flavour=OPENMPI, cores=4, hosts=1) == [
        MPIEXEC, "-n", "2", "--hostfile", "hosts",
        "-x", "OMP_NUM_THREADS=2", "-x", "OPENBLAS_NUM_THREADS=2", "-x", "MKL_NUM_THREADS=2",
        "-x", "MPIPROP_GPUS_PER_NODE=2", PYTHON, "-m", "mpiprop.launch.bootstrap", "-m", "examples.mnist"]


def test_open_mpi_oversubscribes_a_single_node_with_more_ranks_than_cores():
    cmd = command(RunOptions(ranks=4, program=["t.py"], threads_per_rank=1), flavour=OPENMPI, cores=2)
    assert cmd[:4] == [MPIEXEC, "-n", "4", "--oversubscribe"]
    assert "--oversubscribe" not in command(RunOptions(ranks=4, program=["t.py"]), flavour=MPICH, cores=2)


def test_extra_environment_comes_last():
    options = RunOptions(ranks=1, program=["t.py"], threads_per_rank=1, environment=(("MPIPROP_SCALE_MODE", "weak"),))
    assert command(options) == [MPIEXEC, "-n", "1", *THREADS_1, "-genv", "MPIPROP_SCALE_MODE", "weak",
                                PYTHON, "-m", "mpiprop.launch.bootstrap", "t.py"]


@pytest.mark.parametrize("ranks, cores, hosts, expected", [(1, 8, 1, 8), (3, 8, 1, 2), (16, 8, 1, 1), (8, 8, 2, 2),
                                                             (5, 8, 2, 2)])
def test_default_threads_per_rank(ranks, cores, hosts, expected):
    assert threads_per_rank(RunOptions(ranks=ranks, program=["t.py"]), cores, hosts) == expected


def test_flavour_from_version_text():
    assert parse_flavour("HYDRA build details:\n    Version:  5.0.2") == MPICH
    assert parse_flavour("mpiexec (OpenRTE) 4.1.6\n\nReport bugs to http://www.open-mpi.org/") == OPENMPI
    assert parse_flavour("mpiexec (Open MPI) 5.0.3") == OPENMPI
    assert parse_flavour("Intel(R) MPI Library for Linux* OS, Version 2021.10") == MPICH


def test_hostfile_host_count_ignores_comments_and_blank_lines():
    assert count_hosts("# cluster\nnode1:4\n\nnode2 slots=4  # second\n   \n") == 2


def test_warnings_for_oversubscription_and_shared_gpus():
    assert launch_warnings(RunOptions(ranks=2, program=["t.py"]), cores=2) == []
    oversubscribed = launch_warnings(RunOptions(ranks=4, program=["t.py"]), cores=2)
    assert len(oversubscribed) == 1 and "4 ranks per node on 2 cores" in oversubscribed[0]
    shared = launch_warnings(RunOptions(ranks=4, program=["t.py"], gpus_per_node=2), cores=8)
    assert len(shared) == 1 and "share 2 GPU" in shared[0]


@pytest.mark.parametrize("bad", [dict(ranks=0), dict(ranks=-2), dict(ranks=2, gpus_per_node=0),
                                 dict(ranks=2, threads_per_rank=0), dict(ranks=2.5)])
def test_run_options_reject_non_positive_counts(bad):
    with pytest.raises(ValueError, match="positive integer"):
        RunOptions(program=["t.py"], **bad)


def test_run_options_need_a_program():
    with pytest.raises(ValueError, match="no script"):
        RunOptions(ranks=2, program=[])


@pytest.mark.parametrize("environ, expected", [
    ({"MPI_LOCALRANKID": "3"}, 3), ({"OMPI_COMM_WORLD_LOCAL_RANK": "1"}, 1), ({"SLURM_LOCALID": "2"}, 2), ({}, None)])
def test_local_rank_from_each_launcher(environ, expected):
    assert bootstrap.local_rank(environ) == expected


def test_gpu_binding_cycles_through_the_node_gpus():
    assert [bootstrap.gpu_for_rank(rank, 2) for rank in range(5)] == ["0", "1", "0", "1", "0"]
    assert [bootstrap.gpu_for_rank(rank, 2, visible="4,6") for rank in range(3)] == ["4", "6", "4"]


def test_bind_gpu_sets_cuda_visible_devices_only_when_asked():
    environ = {"MPI_LOCALRANKID": "3", "MPIPROP_GPUS_PER_NODE": "2"}
    assert bootstrap.bind_gpu(environ) == "1" and environ["CUDA_VISIBLE_DEVICES"] == "1"
    untouched = {"MPI_LOCALRANKID": "3"}
    assert bootstrap.bind_gpu(untouched) is None and "CUDA_VISIBLE_DEVICES" not in untouched
    with pytest.raises(ValueError, match="MPIPROP_GPUS_PER_NODE"):
        bootstrap.bind_gpu({"MPIPROP_GPUS_PER_NODE": "two"})


@pytest.mark.parametrize("arguments, own, program", [
    (["-n", "2", "train.py", "-n", "5"], ["-n", "2"], ["train.py", "-n", "5"]),
    (["--dry-run", "-n", "2", "--trace", "t.json", "train.py"], ["--dry-run", "-n", "2", "--trace", "t.json"],
     ["train.py"]),
    (["-n", "2", "-m", "pkg.mod", "--lr", "1"], ["-n", "2"], ["-m", "pkg.mod", "--lr", "1"]),
    (["--ranks=2", "--", "-weird.py"], ["--ranks=2"], ["-weird.py"]),
    (["-n", "2"], ["-n", "2"], []),
])
def test_run_arguments_split_before_the_program(arguments, own, program):
    assert cli.split_run_arguments(arguments) == (own, program)


def test_dry_run_prints_the_command(capsys):
    assert cli.main(["run", "-n", "2", "--threads-per-rank", "1", "--dry-run", "train.py", "--epochs", "3"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[1:] == ["-n", "2", *THREADS_1, printed[-6], "-m", "mpiprop.launch.bootstrap", "train.py", "--epochs", "3"]
    assert printed[0].endswith(("mpiexec", "mpirun"))


@pytest.mark.parametrize("arguments, message", [
    (["run", "-n", "2"], "no script to run"),
    (["run", "-n", "0", "train.py"], "must be a positive integer, got 0"),
    (["run", "-n", "two", "train.py"], "must be a positive integer, got 'two'"),
    (["run", "train.py"], "required: -n/--ranks"),
    (["run", "-n", "2", "does_not_exist.py"], "does not exist"),
    (["run", "-n", "2", "--stall-timeout", "0", "train.py"], "positive, finite number of seconds, got '0'"),
    (["run", "-n", "2", "--stall-timeout", "soon", "train.py"], "must be a number of seconds, got 'soon'"),
    (["run", "-n", "2", "--hostfile", "no_such_hostfile", "--dry-run", "train.py"], "hostfile 'no_such_hostfile'"),
    (["scale", "--ranks", "1,2", "--mode", "medium"], "invalid choice: 'medium'"),
    (["scale", "--ranks", "1,two"], "cannot read rank list '1,two'"),
    (["scale", "--ranks", "1,0"], "cannot read rank list '1,0'"),
    (["scale", "--ranks", "2,2"], "repeats a rank count"),
    (["model", "--layouts", "4y2"], "cannot read layout '4y2'"),
])
def test_bad_arguments_exit_with_a_clear_error(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(arguments)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
