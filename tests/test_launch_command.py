"""mpiprop run: launcher command lines (literal, per flavour), GPU binding, argument splitting and argument errors."""
from __future__ import annotations

import os

import pytest

from mpiprop.launch import bootstrap, cli
from mpiprop.launch.mpiexec import (AUTO, MPICH, MPIEXEC, OPENMPI, SRUN, RunOptions, build_command, choose_launcher,
                                    count_hosts, launch_warnings, launcher_prefix, parse_flavour)

MPIEXEC_PATH, PYTHON = "/venv/bin/mpiexec", "/venv/bin/python"
THREADS_1 = ["-genv", "OMP_NUM_THREADS", "1", "-genv", "OPENBLAS_NUM_THREADS", "1", "-genv", "MKL_NUM_THREADS", "1"]
BOOTSTRAP = [PYTHON, "-m", "mpiprop.launch.bootstrap"]


def command(options: RunOptions, flavour: str = MPICH, cores: int = 8, as_root: bool = False,
            launcher: str = MPIEXEC_PATH) -> list[str]:
    return build_command(options, mpiexec=launcher, flavour=flavour, python=PYTHON, cores=cores, as_root=as_root)


def test_plain_run_leaves_threads_to_the_ranks():
    assert command(RunOptions(ranks=4, program=["train.py", "--lr", "0.1"])) == [
        MPIEXEC_PATH, "-n", "4", *BOOTSTRAP, "train.py", "--lr", "0.1"]


def test_hostfile_gpus_threads_and_trace_with_mpich():
    options = RunOptions(ranks=8, program=["train.py"], hostfile="hosts", gpus_per_node=4, threads_per_rank=1,
                         trace="trace.json", stall_timeout=300.0)
    assert command(options) == [
        MPIEXEC_PATH, "-n", "8", "-f", "hosts", *THREADS_1,
        "-genv", "MPIPROP_GPUS_PER_NODE", "4", "-genv", "MPIPROP_TRACE", "trace.json",
        "-genv", "MPIPROP_STALL_TIMEOUT", "300", *BOOTSTRAP, "train.py"]


def test_open_mpi_flags():
    options = RunOptions(ranks=2, program=["-m", "examples.mnist"], hostfile="hosts", gpus_per_node=2,
                         threads_per_rank=2)
    assert command(options, flavour=OPENMPI, cores=4) == [
        MPIEXEC_PATH, "-n", "2", "--hostfile", "hosts", "--mca", "osc", "^ucx",
        "-x", "OMP_NUM_THREADS=2", "-x", "OPENBLAS_NUM_THREADS=2", "-x", "MKL_NUM_THREADS=2",
        "-x", "MPIPROP_GPUS_PER_NODE=2", *BOOTSTRAP, "-m", "examples.mnist"]


def test_open_mpi_as_root_with_more_ranks_than_cores():
    assert command(RunOptions(ranks=4, program=["t.py"]), flavour=OPENMPI, cores=2, as_root=True) == [
        MPIEXEC_PATH, "-n", "4", "--oversubscribe", "--allow-run-as-root", "--mca", "osc", "^ucx", *BOOTSTRAP, "t.py"]
    assert command(RunOptions(ranks=2, program=["t.py"]), flavour=OPENMPI, cores=2) == [
        MPIEXEC_PATH, "-n", "2", "--mca", "osc", "^ucx", *BOOTSTRAP, "t.py"]
    assert command(RunOptions(ranks=4, program=["t.py"]), flavour=MPICH, cores=2, as_root=True) == [
        MPIEXEC_PATH, "-n", "4", *BOOTSTRAP, "t.py"]


def test_srun_exports_the_variables_and_refuses_a_hostfile():
    options = RunOptions(ranks=4, program=["t.py"], gpus_per_node=4, trace="t.json")
    assert command(options, flavour=SRUN, launcher="/usr/bin/srun") == [
        "/usr/bin/srun", "-n", "4", "--export=ALL,MPIPROP_GPUS_PER_NODE=4,MPIPROP_TRACE=t.json", *BOOTSTRAP, "t.py"]
    assert command(RunOptions(ranks=2, program=["t.py"]), flavour=SRUN, launcher="srun") == [
        "srun", "-n", "2", *BOOTSTRAP, "t.py"]
    with pytest.raises(ValueError, match="Slurm's allocation chooses the hosts"):
        command(RunOptions(ranks=2, program=["t.py"], hostfile="hosts"), flavour=SRUN)
    with pytest.raises(ValueError, match="'MPIPROP_TRACE=a,b.json'"):
        command(RunOptions(ranks=2, program=["t.py"], trace="a,b.json"), flavour=SRUN)


@pytest.mark.parametrize("flavour, expected", [
    (MPICH, [MPIEXEC_PATH, "-n", "2", "-bind-to", "core", *BOOTSTRAP, "t.py"]),
    (OPENMPI, [MPIEXEC_PATH, "-n", "2", "--allow-run-as-root", "--mca", "osc", "^ucx", "-bind-to", "core",
               *BOOTSTRAP, "t.py"]),
    (SRUN, [MPIEXEC_PATH, "-n", "2", "-bind-to", "core", *BOOTSTRAP, "t.py"]),
])
def test_launcher_arguments_come_after_mpiprops_own(flavour, expected):
    options = RunOptions(ranks=2, program=["t.py"], launcher_arguments=("-bind-to", "core"))
    assert command(options, flavour=flavour, cores=2, as_root=True) == expected


def test_launcher_prefix_is_the_part_before_the_program():
    assert launcher_prefix("mpirun", OPENMPI, 4, cores=2, as_root=True, arguments=["--tag-output"]) == [
        "mpirun", "-n", "4", "--oversubscribe", "--allow-run-as-root", "--mca", "osc", "^ucx", "--tag-output"]
    assert launcher_prefix("mpiexec", MPICH, 4, cores=2, hostfile="hosts") == ["mpiexec", "-n", "4", "-f", "hosts"]
    with pytest.raises(ValueError, match="unknown MPI flavour 'lam'"):
        launcher_prefix("mpiexec", "lam", 2, cores=2)


def test_extra_environment_comes_last():
    options = RunOptions(ranks=1, program=["t.py"], threads_per_rank=1, environment=(("MPIPROP_SCALE_MODE", "weak"),))
    assert command(options) == [MPIEXEC_PATH, "-n", "1", *THREADS_1, "-genv", "MPIPROP_SCALE_MODE", "weak",
                                *BOOTSTRAP, "t.py"]


def test_flavour_from_version_text():
    assert parse_flavour("HYDRA build details:\n    Version:  5.0.2") == MPICH
    assert parse_flavour("mpiexec (OpenRTE) 4.1.6\n\nReport bugs to http://www.open-mpi.org/") == OPENMPI
    assert parse_flavour("mpiexec (Open MPI) 5.0.3") == OPENMPI
    assert parse_flavour("Intel(R) MPI Library for Linux* OS, Version 2021.10") == MPICH


def fake_launcher(directory, name: str, version: str) -> str:
    """An executable `name` in `directory` that prints `version` (as `mpiexec --version` would)."""
    path = directory / name
    path.write_text(f"#!/bin/sh\necho '{version}'\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def launchers_on_path(tmp_path, monkeypatch):
    """srun and an Open MPI mpiexec on PATH, no mpiexec beside the Python given to choose_launcher."""
    srun = fake_launcher(tmp_path, "srun", "slurm 24.05.1")
    mpiexec = fake_launcher(tmp_path, "mpiexec", "mpiexec (Open MPI) 5.0.11")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("MPIPROP_MPIEXEC", raising=False)
    return srun, mpiexec, str(tmp_path / "elsewhere" / "python")


def test_srun_is_chosen_inside_a_slurm_allocation_or_when_asked(launchers_on_path):
    srun, mpiexec, python = launchers_on_path
    assert choose_launcher(AUTO, {"SLURM_JOB_ID": "42"}, python) == (srun, SRUN)
    assert choose_launcher(AUTO, {}, python) == (mpiexec, OPENMPI)
    assert choose_launcher(MPIEXEC, {"SLURM_JOB_ID": "42"}, python) == (mpiexec, OPENMPI)
    assert choose_launcher(SRUN, {}, python) == (srun, SRUN)


def test_asking_for_srun_without_one_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no srun is on PATH.*--launcher mpiexec"):
        choose_launcher(SRUN, {}, str(tmp_path / "python"))


def test_hostfile_host_count_ignores_comments_and_blank_lines():
    assert count_hosts("# cluster\nnode1:4\n\nnode2 slots=4  # second\n   \n") == 2


def test_warnings_for_shared_gpus():
    assert launch_warnings(RunOptions(ranks=4, program=["t.py"])) == []
    shared = launch_warnings(RunOptions(ranks=4, program=["t.py"], gpus_per_node=2))
    assert len(shared) == 1 and "share 2 GPU" in shared[0]
    assert launch_warnings(RunOptions(ranks=4, program=["t.py"], gpus_per_node=2), hosts=2) == []


@pytest.mark.parametrize("bad", [dict(ranks=0), dict(ranks=-2), dict(ranks=2, gpus_per_node=0),
                                 dict(ranks=2, threads_per_rank=0), dict(ranks=2.5)])
def test_run_options_reject_non_positive_counts(bad):
    with pytest.raises(ValueError, match="positive integer"):
        RunOptions(program=["t.py"], **bad)


def test_run_options_need_a_program():
    with pytest.raises(ValueError, match="no script"):
        RunOptions(ranks=2, program=[])


BATCH_STEP = {"SLURM_JOB_ID": "42", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}  # what a batch script's ranks inherit


@pytest.mark.parametrize("environ, expected", [
    ({"PMI_RANK": "3", "MPI_LOCALRANKID": "3"}, 3),
    ({"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_LOCAL_RANK": "1", "PMIX_RANK": "5"}, 1),
    ({"MV2_COMM_WORLD_RANK": "6", "MV2_COMM_WORLD_LOCAL_RANK": "2"}, 2),
    ({"SLURM_PROCID": "6", "SLURM_LOCALID": "2"}, 2),
    ({**BATCH_STEP, "PMI_RANK": "1", "MPI_LOCALRANKID": "1"}, 1),  # mpiexec inside a batch script
    ({**BATCH_STEP, "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "1", "PMIX_RANK": "1"}, 1),
    ({**BATCH_STEP, "PMIX_RANK": "1"}, None),  # a PMIx launcher mpiprop does not know: the batch step's are stale
    ({"MPI_LOCALRANKID": "3"}, None),  # a local rank without the launcher's rank
    (BATCH_STEP, 0),  # the batch script itself, rank 0 of one
    ({}, None)])
def test_local_rank_from_each_launcher_ignoring_inherited_variables(environ, expected):
    assert bootstrap.local_rank(environ) == expected


def test_gpu_binding_cycles_through_the_node_gpus():
    assert [bootstrap.gpu_for_rank(rank, 2) for rank in range(5)] == ["0", "1", "0", "1", "0"]
    assert [bootstrap.gpu_for_rank(rank, 2, visible="4,6") for rank in range(3)] == ["4", "6", "4"]


def test_bind_gpu_sets_cuda_visible_devices_only_when_asked():
    environ = {"PMI_RANK": "3", "MPI_LOCALRANKID": "3", "MPIPROP_GPUS_PER_NODE": "2"}
    assert bootstrap.bind_gpu(environ) == "1" and environ["CUDA_VISIBLE_DEVICES"] == "1"
    untouched = {"PMI_RANK": "3", "MPI_LOCALRANKID": "3"}
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
    (["-n", "2", "--mpi-arg", "--bind-to", "--mpi-arg=core", "t.py"], ["-n", "2", "--mpi-arg=--bind-to", "--mpi-arg=core"],
     ["t.py"]),
    (["--launcher", "srun", "-n", "2", "t.py"], ["--launcher", "srun", "-n", "2"], ["t.py"]),
])
def test_run_arguments_split_before_the_program(arguments, own, program):
    assert cli.split_run_arguments(arguments) == (own, program)


def test_dry_run_prints_the_command(capsys, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert cli.main(["run", "-n", "2", "--threads-per-rank", "1", "--mpi-arg", "--tag-output", "--mpi-arg=-l 1",
                     "--dry-run", "train.py", "--epochs", "3"]) == 0
    printed = capsys.readouterr().out.split()
    launcher_flags = printed[3:printed.index("--tag-output")]
    assert printed[1:3] == ["-n", "2"] and printed[0].endswith(("mpiexec", "mpirun"))
    assert launcher_flags in ([], ["--allow-run-as-root", "--mca", "osc", "^ucx"], ["--mca", "osc", "^ucx"])
    rest = printed[3 + len(launcher_flags):]
    threads = THREADS_1 if "-genv" in rest else ["-x", "OMP_NUM_THREADS=1", "-x", "OPENBLAS_NUM_THREADS=1",
                                                 "-x", "MKL_NUM_THREADS=1"]
    assert rest == ["--tag-output", "-l", "1", *threads, rest[-6], "-m", "mpiprop.launch.bootstrap", "train.py",
                    "--epochs", "3"]
    assert (launcher_flags[:1] == ["--allow-run-as-root"]) == (os.geteuid() == 0 and launcher_flags != [])


@pytest.mark.parametrize("arguments, message", [
    (["run", "-n", "2"], "no script to run"),
    (["run", "-n", "0", "train.py"], "must be a positive integer, got 0"),
    (["run", "-n", "two", "train.py"], "must be a positive integer, got 'two'"),
    (["run", "train.py"], "required: -n/-np/--ranks"),
    (["run", "-n", "2", "does_not_exist.py"], "does not exist"),
    (["run", "-n", "2", "--stall-timeout", "0", "train.py"], "positive, finite number of seconds, got '0'"),
    (["run", "-n", "2", "--stall-timeout", "soon", "train.py"], "must be a number of seconds, got 'soon'"),
    (["run", "-n", "2", "--hostfile", "no_such_hostfile", "--dry-run", "train.py"], "hostfile 'no_such_hostfile'"),
    (["run", "-n", "2", "--launcher", "lsf", "train.py"], "invalid choice: 'lsf'"),
    (["run", "-n", "2", "--mpi-arg", "'--bind-to", "--dry-run", "train.py"], "--mpi-arg \"'--bind-to\" cannot be split"),
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
