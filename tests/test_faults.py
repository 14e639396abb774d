"""Faults in real mpiexec jobs: each must end the job promptly, say what happened, and leave the files usable.

Output goes through pipes, as launchers read it. Times are measured from the fault (a marker
the ranks print, or the moment the test sends a signal), because starting Python and MPI alone
can take many seconds on a loaded machine; each test prints "JOB-ENDED <case>: <seconds>"
(visible with `pytest -s`).
"""
import contextlib
import glob
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy
import pytest

from mpiprop.distributed.transport.launcher_environment import RANK_VARIABLES
from mpiprop.launch.job_processes import JOB_MARKER_VARIABLE, new_job_marker, processes_with, stop_job
from mpi_launch import (MPI_SCRIPTS, REPOSITORY_ROOT, local_launcher, mpi_env, mpiexec_command, run_bounded, run_mpi,
                        start_mpi_job, start_until_ready, stop_probed)
from mpiprop.launch.mpiexec import MPICH
from mpiprop.distributed.reliability.shared_memory_files import mapped_shared_memory_files, openmp_registration_file
from mpiprop.network.training.checkpoint import read_checkpoint
from packages import require
from processes import command_line, is_running

pytestmark = pytest.mark.mpi  # every test here runs real multi-rank jobs

ENDS_WITHIN_S = 30  # a bound for waits in the tests themselves, with room for a slow, shared machine
ENDS_WITHIN_10_S = 10  # from the fault to the end of every process of the job
TRAIN_DIGITS = REPOSITORY_ROOT / "examples" / "train_digits.py"
DIGITS_ARGUMENTS = ["--epochs", "3", "--hidden", "32", "--quiet", "--seed", "0", "--checkpoint-every", "4"]


def seconds_since_marker(result, marker, finished):
    started = [float(value) for value in re.findall(rf"{marker} (\d+\.\d+)", result.stdout)]
    assert started, result.stdout + result.stderr
    return finished - max(started)


# --- every way a rank or the launcher can end ----------------------------------------------------------------------
def start_leaving_job(ranks, mode, *args):
    """Start dp_leave.py with stdout and stderr piped, and wait until every rank has trained a step."""
    output = []

    def not_ready(started):
        try:
            output.append(read_until(started[0], "TRAINING-STARTS", ranks, timeout=120))
        except AssertionError as not_started:
            return str(not_started)

    job, marker = start_until_ready(lambda: start_mpi_job("dp_leave.py", ranks, mode, *args, stdout=subprocess.PIPE),
                                    not_ready, lambda started: stop_job(*started))
    return job, marker, output[-1]


def read_until(job, marker, count, timeout):
    """The job's stdout up to the `count`-th occurrence of `marker` (ranks' lines may interleave)."""
    text, deadline = "", time.monotonic() + timeout
    while text.count(marker) < count:
        ready, _, _ = select.select([job.stdout], [], [], max(deadline - time.monotonic(), 0))
        chunk = os.read(job.stdout.fileno(), 65536).decode() if ready else ""
        assert chunk, f"the job ended or stalled before printing {marker} {count} times: {text}"
        text += chunk
    return text


def seconds_until_the_job_ends(job, marker, since, within=ENDS_WITHIN_10_S + 20):
    """Wait (at most `within` seconds) until mpiexec and every process of the job are gone."""
    deadline = since + within
    while (job.poll() is None or processes_with(JOB_MARKER_VARIABLE, marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return time.monotonic() - since


@contextlib.contextmanager
def stopped_at_the_end(job, marker):
    try:
        yield
    finally:
        if job.poll() is None or processes_with(JOB_MARKER_VARIABLE, marker):
            stop_job(job, marker)


def openmp_registrations():
    """Every OpenMP registration file in /dev/shm now (a killed process's stays, and its pid may come again)."""
    return set(glob.glob(os.path.join(os.path.dirname(openmp_registration_file(0)), "__KMP_REGISTERED_LIB_*")))


def job_shared_memory_files(marker, registered_before):
    """The files in /dev/shm that the ranks of a running job have mapped or registered (OpenMP's), less the
    registrations in `registered_before` (from `openmp_registrations` before the job started), which a rank
    only inherited with its pid."""
    ranks = [pid for pid in processes_with(JOB_MARKER_VARIABLE, marker) if sys.executable in command_line(pid)]
    files = {path for pid in ranks for path in mapped_shared_memory_files(pid)}
    files |= {openmp_registration_file(pid) for pid in ranks if os.path.exists(openmp_registration_file(pid))} - \
        registered_before
    assert any("mpich_shm" in path or "sm_segment" in path for path in files), files  # MPICH's, Open MPI's
    return files


def job_process(marker, name):
    """The id of the process of the job whose command line holds `name` (e.g. "hydra_pmi_proxy")."""
    for pid in processes_with(JOB_MARKER_VARIABLE, marker):
        if name in command_line(pid):
            return pid
    raise AssertionError(f"no process {name!r} in the job")


def test_exception_on_one_rank_ends_the_job_with_its_traceback():
    result = run_mpi("dp_abort.py", 2, check=False, timeout=90)
    finished = time.time()
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "rank 1: RuntimeError: deliberate failure on rank 1 at step 2" in result.stderr, output
    assert "rank 1: Traceback (most recent call last):" in result.stderr, output
    assert "finished without the failure" not in output, output
    ended_in = seconds_since_marker(result, "FAILURE-AT", finished)
    assert ended_in < ENDS_WITHIN_10_S
    print(f"JOB-ENDED exception on rank 1: {ended_in:.1f} s")


@pytest.mark.parametrize("launcher", [["-m", "mpiprop.launch", "run", "-n", "2"], ["-m", "mpi4py"]],
                         ids=["mpiprop run", "python -m mpi4py"])
def test_an_exception_before_importing_mpiprop_ends_the_job_under_the_launchers_that_handle_it(launcher):
    script = str(MPI_SCRIPTS / "raise_before_import.py")
    if launcher[1] == "mpi4py":
        command = mpiexec_command(2, sys.executable, *launcher, script)
    else:
        command = [sys.executable, *launcher, script]
    started = time.monotonic()
    result = run_bounded(command, 90, env=mpi_env(), cwd=REPOSITORY_ROOT)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "RuntimeError: deliberate failure before importing mpiprop" in result.stderr, result.stderr
    assert "finished without the failure" not in result.stdout
    print(f"JOB-ENDED exception before import under {' '.join(launcher)}: {time.monotonic() - started:.1f} s "
          "from the start")


@pytest.mark.parametrize("ranks, mode", [(2, "sys-exit-3"), (4, "sys-exit-0")])
def test_a_rank_that_ends_its_program_early_ends_the_job_naming_it(ranks, mode):
    job, marker, started = start_leaving_job(ranks, mode)
    with stopped_at_the_end(job, marker):
        stdout, stderr = job.communicate(timeout=ENDS_WITHIN_S + 30)
        stdout = started + stdout
        finished = time.time()
        took = seconds_until_the_job_ends(job, marker, time.monotonic())
    assert job.returncode == 5, stderr
    last = ranks - 1
    assert re.search(rf"rank \d: rank {last} has left the job \(its program ended or called sys.exit\) while rank \d "
                     r"waits for it in allreduce of \d+ \w+", stderr), stderr
    assert took < ENDS_WITHIN_10_S  # after mpiexec, nothing of the job is left
    ended_in = seconds_since_marker(subprocess.CompletedProcess([], 0, stdout, stderr), "FAULT-AT", finished)
    assert ended_in < ENDS_WITHIN_10_S
    print(f"JOB-ENDED {mode} on rank {last} of {ranks}: {ended_in:.1f} s")


def test_os_exit_0_on_one_rank_under_mpiprop_run_is_reported_and_fails():
    """MPICH kills the other ranks and reports success; the missing finish marks tell `mpiprop run`."""
    started = time.monotonic()
    result = run_bounded([sys.executable, "-m", "mpiprop.launch", "run", "-n", "2", str(MPI_SCRIPTS / "dp_leave.py"),
                          "os-exit-0"], 90, env=mpi_env(), cwd=REPOSITORY_ROOT)
    assert result.returncode != 0, result.stdout + result.stderr
    said = (r"mpiprop run: ranks? [0-9, ]*1 of 2 ended without finishing the program \(os._exit, or killed"
            if local_launcher().flavour == MPICH else r"exited due to process rank 1 with PID \d+")  # Open MPI's own
    assert re.search(said, result.stderr), result.stderr
    print(f"JOB-ENDED os._exit(0) on rank 1 under mpiprop run: {time.monotonic() - started:.1f} s from the start")


def test_a_rank_whose_process_ends_unseen_by_the_launcher_is_noticed_by_the_others():
    """Each rank runs under a shell that outlives it, so the launcher sees no process end when rank 1 calls
    os._exit(0): rank 0, waiting for it in the gradient allreduce, notices the process gone (same node) and
    ends the job within the grace period, naming rank 1."""
    started = time.monotonic()
    script = f'"{sys.executable}" "{MPI_SCRIPTS / "dp_leave.py"}" os-exit-0; sleep 60'
    result = run_bounded(mpiexec_command(2, "sh", "-c", script), 60, env=mpi_env(), cwd=REPOSITORY_ROOT)
    took = time.monotonic() - started
    assert result.returncode != 0, result.stdout + result.stderr
    assert re.search(r"rank 0: rank 1 has left the job \(its process ended without finishing the program: os._exit, "
                     r"or killed\) while rank 0 waits for it in", result.stderr), result.stderr
    assert took < ENDS_WITHIN_10_S + 5, took
    print(f"JOB-ENDED os._exit(0) on rank 1 unseen by the launcher: {took:.1f} s from the start")


@pytest.mark.parametrize("stderr_read", [True, False], ids=["stderr read", "stderr pipe broken"])
def test_a_rank_whose_launcher_is_gone_exits_by_itself(stderr_read):
    """The orphan guard: a process whose parent (for a rank, mpiexec's proxy) dies exits with status 4.

    Its stderr is a pipe, as under a proxy; when nobody reads it any more (the proxy died
    with it), writing the message fails with EPIPE, and the process must end all the same.
    """
    child = ("from mpiprop.distributed.reliability.orphan_guard import watch_parent; import time; "
             "watch_parent(rank=5, check_every_s=0.1); print('watching', flush=True); time.sleep(120)")
    launcher = subprocess.Popen(["sh", "-c", f'"$0" -c "{child}" & echo $!; wait', sys.executable],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=mpi_env(),
                                start_new_session=True)
    try:
        pid = int(launcher.stdout.readline())
        assert launcher.stdout.readline() == "watching\n"
        if not stderr_read:
            launcher.stderr.close()
        launcher.kill()
        launcher.wait()
        gone_by = time.monotonic() + ENDS_WITHIN_10_S
        while is_running(pid) and time.monotonic() < gone_by:
            time.sleep(0.1)
        assert not is_running(pid), "the orphaned process kept running"
        if stderr_read:
            assert "rank 5: its launcher (process" in launcher.stderr.read()
    finally:
        with contextlib.suppress(ProcessLookupError):  # nothing left of the group: the expected outcome
            os.killpg(launcher.pid, signal.SIGKILL)


def test_killing_the_launcher_proxy_ends_every_rank_although_their_output_pipes_are_broken():
    if local_launcher().flavour != MPICH:
        pytest.skip(f"kills MPICH's per-node proxy (hydra_pmi_proxy); {local_launcher().flavour}'s launcher "
                    "starts the ranks of one node itself")
    """The orphaned ranks exit by themselves, and remove the job's files in /dev/shm as they go."""
    registered_before = openmp_registrations()
    job, marker, _ = start_leaving_job(2, "none")
    with stopped_at_the_end(job, marker):
        files = job_shared_memory_files(marker, registered_before)
        os.kill(job_process(marker, "hydra_pmi_proxy"), signal.SIGKILL)
        took = seconds_until_the_job_ends(job, marker, time.monotonic())
        left = processes_with(JOB_MARKER_VARIABLE, marker)
        assert not left and job.poll() is not None, f"after {took:.1f} s: mpiexec {job.poll()}, left {left}"
        assert took < ENDS_WITHIN_10_S
        assert job.returncode != 0
    assert [path for path in files if os.path.exists(path)] == []
    print(f"JOB-ENDED proxy killed: {took:.1f} s")


# The ranks of dp_leave.py "none" train forever, so any bound tells an ended job from one left running; after
# SIGHUP or SIGKILL, mpiexec is gone at once and the ranks' orphan guards (polling once a second) end them, which
# a machine loaded with other jobs has taken more than 30 s to schedule. The time is printed.
SIGNALLED_JOB_ENDS_WITHIN_S = 90


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_to_mpiexec_ends_every_rank(signum):
    job, marker, _ = start_leaving_job(2, "none")
    with stopped_at_the_end(job, marker):
        job.send_signal(signum)
        took = seconds_until_the_job_ends(job, marker, time.monotonic(), within=SIGNALLED_JOB_ENDS_WITHIN_S)
        left = processes_with(JOB_MARKER_VARIABLE, marker)
        stderr = job.communicate(timeout=SIGNALLED_JOB_ENDS_WITHIN_S)[1] if not left else ""
        assert not left and job.poll() is not None, f"after {took:.1f} s: mpiexec {job.poll()}, left {left}"
    assert took < SIGNALLED_JOB_ENDS_WITHIN_S
    assert job.returncode != 0, stderr
    if signum == signal.SIGTERM and local_launcher().flavour == MPICH:  # Hydra forwards it to the ranks
        assert re.search(r"rank \d: ended by SIGTERM", stderr), stderr
    print(f"JOB-ENDED {signal.Signals(signum).name} to mpiexec: {took:.1f} s (status {job.returncode})\n{stderr}")


@pytest.mark.parametrize("ending", ["aborted by the watchdog", "SIGTERM to mpiexec"])
def test_a_job_that_cannot_finish_leaves_no_shared_memory_files(monkeypatch, ending):
    """The files the ranks had in /dev/shm (MPICH's segment, OpenMP's registrations) must be gone after the job."""
    monkeypatch.setenv("MPIPROP_STALL_TIMEOUT", "3")
    registered_before = openmp_registrations()
    job, marker, _ = start_leaving_job(2, "sleep" if ending == "aborted by the watchdog" else "none")
    with stopped_at_the_end(job, marker):
        files = job_shared_memory_files(marker, registered_before)
        if ending == "SIGTERM to mpiexec":
            job.send_signal(signal.SIGTERM)
        job.communicate(timeout=ENDS_WITHIN_S + 30)
        seconds_until_the_job_ends(job, marker, time.monotonic())
    if ending == "aborted by the watchdog":
        assert job.returncode == 3
    else:  # MPICH's mpiexec dies of the signal it forwarded (15), Open MPI's reports failure (1)
        assert job.returncode == (15 if local_launcher().flavour == MPICH else 1)
    assert [path for path in files if os.path.exists(path)] == []


# --- stalls and the user's own communication -----------------------------------------------------------------------
def test_stalled_rank_is_reported_by_the_watchdog_which_aborts_the_job():
    result = run_mpi("stall.py", 2, check=False, timeout=90, env={"MPIPROP_STALL_TIMEOUT": "3"})
    finished = time.time()
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert re.search(r"rank 0: stall: rank 0 has waited [0-9.]+ s \(limit 3 s\) in allreduce of \d+ float32",
                     result.stderr), output
    assert re.search(r"rank 0: .* rank 1 stopped arriving: rank 1 is not communicating \(at \S*stall.py:\d+ in main\)",
                     result.stderr), output  # the rank that stopped, not only the one that waits for it
    assert "in backward" in result.stderr, output  # the main thread's stack shows where it waits
    assert "finished without the stall" not in output, output
    waited = seconds_since_marker(result, "STALL-BEGINS", finished)
    assert 3 <= waited < 3 + ENDS_WITHIN_10_S, output
    print(f"JOB-ENDED stall (limit 3 s): {waited:.1f} s")


@pytest.mark.parametrize("mode, status, report", [
    ("exit", 5, r"rank 0: rank 1 has left the job \(its program ended or called sys.exit\) while rank 0 waits for it "
                r"in allreduce of the round number"),
    ("stall", 3, r"rank 0: stall: rank 0 has waited [0-9.]+ s \(limit 3 s\) in allreduce of the round number; rank 1 "
                 r"stopped arriving: rank 1 is not communicating \(at \S*user_wait.py:\d+ in main\)")])
def test_the_users_own_communication_under_waiting_in_is_watched_too(mode, status, report):
    result = run_mpi("user_wait.py", 2, mode, check=False, timeout=90, env={"MPIPROP_STALL_TIMEOUT": "3"})
    finished = time.time()
    assert result.returncode == status, result.stdout + result.stderr
    assert re.search(report, result.stderr), result.stderr
    ended_in = seconds_since_marker(result, "FAULT-AT", finished)
    assert ended_in < ENDS_WITHIN_10_S
    print(f"JOB-ENDED user's allreduce, last rank {mode}: {ended_in:.1f} s")


# --- signals to the launchers --------------------------------------------------------------------------------------
def start_mpiprop(*arguments, script="dp_leave.py", ranks=2, timeout=120):
    """`python -m mpiprop.launch ARGUMENTS` with output piped, returned once `ranks` ranks of `script` run,
    with the probe that every process it starts carries."""
    def start():
        probe = new_job_marker()
        return subprocess.Popen([sys.executable, "-m", "mpiprop.launch", *map(str, arguments)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=mpi_env({"TEST_PROBE": probe}), cwd=REPOSITORY_ROOT, start_new_session=True), probe

    def not_ready(started):
        process, probe = started
        deadline = time.monotonic() + timeout
        while len([pid for pid in processes_with("TEST_PROBE", probe) if script in command_line(pid)]) < ranks:
            if process.poll() is not None or time.monotonic() > deadline:
                return (f"{ranks} ranks of {script} were not running after {time.monotonic() - deadline + timeout:.0f}"
                        f" s (the launcher's status: {process.poll()})")
            time.sleep(0.1)
        time.sleep(1)  # past MPI's start, into training

    return start_until_ready(start, not_ready, lambda started: stop_probed(*started))


def signalled_launcher_ends_with_its_job(process, probe, signum, passed_on=False):
    """`passed_on`: the launcher passes the signal on and ends with the job's own status (`mpiprop run`);
    otherwise it stops the job and ends with status 128 + signum (`mpiprop scale`)."""
    try:
        os.kill(process.pid, signum)
        since = time.monotonic()
        deadline = since + ENDS_WITHIN_10_S + 20
        while (process.poll() is None or processes_with("TEST_PROBE", probe)) and time.monotonic() < deadline:
            time.sleep(0.05)
        took = time.monotonic() - since
        left = [command_line(pid) for pid in processes_with("TEST_PROBE", probe)]
        assert process.poll() is not None and not left, f"after {took:.1f} s: status {process.poll()}, left {left}"
        assert took < ENDS_WITHIN_10_S
        stderr = process.communicate()[1].decode()
        name = signal.Signals(signum).name
        if passed_on:
            assert process.returncode != 0, stderr
            assert f"mpiprop: got {name}; passed it on to the job, which ended with status {process.returncode}" \
                in stderr, stderr
        else:
            assert process.returncode == 128 + signum, stderr
            assert f"mpiprop: got {name}; stopped the job" in stderr, stderr
        return took
    finally:
        stop_probed(process, probe)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_to_mpiprop_run_stops_the_whole_job(signum):
    script = MPI_SCRIPTS / "dp_leave.py"
    process, probe = start_mpiprop("run", "-n", 2, script, "none")
    took = signalled_launcher_ends_with_its_job(process, probe, signum, passed_on=True)
    print(f"JOB-ENDED {signal.Signals(signum).name} to mpiprop run: {took:.1f} s")


def test_sigterm_to_mpiprop_scale_stops_the_job_it_runs(tmp_path):
    script = MPI_SCRIPTS / "dp_leave.py"
    process, probe = start_mpiprop("scale", "--ranks", 2, "--out", tmp_path, "--", script, "none")
    took = signalled_launcher_ends_with_its_job(process, probe, signal.SIGTERM)
    print(f"JOB-ENDED SIGTERM to mpiprop scale: {took:.1f} s")


# --- a rank killed with SIGKILL, then resumed ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def uninterrupted_digits(tmp_path_factory):
    return uninterrupted_run(tmp_path_factory, ranks=2, timeout=180)


def uninterrupted_run(tmp_path_factory, ranks, timeout):
    """Final checkpoint and metrics records of the digits example trained on `ranks` ranks without interruption."""
    require("sklearn")
    folder = tmp_path_factory.mktemp(f"uninterrupted{ranks}")
    run_mpi(TRAIN_DIGITS, ranks, *DIGITS_ARGUMENTS, "--checkpoint", folder / "digits.npz",
            "--metrics-out", folder / "metrics.jsonl", timeout=timeout)
    return read_checkpoint(folder / "digits.npz"), metrics_records(folder / "metrics.jsonl")


def metrics_records(path):
    """The per-epoch records of a metrics file, without their wall-clock "time"."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return [{key: value for key, value in record.items() if key != "time"} for record in records]


def test_killed_rank_ends_the_job_and_the_resumed_run_matches_an_uninterrupted_one(tmp_path, uninterrupted_digits):
    """Rank 0, the one that writes checkpoints, is killed while its last checkpoint is one written inside
    an epoch, maybe in the middle of writing the next one.

    The resumed run ends with the same weights and records the same metrics, those of the
    interrupted epoch included (every rank's running sums are in the checkpoint).
    """
    path, metrics = tmp_path / "digits.npz", tmp_path / "metrics.jsonl"
    job, job_marker = start_digits_until_checkpoint(2, path)
    try:
        rank_0 = rank_pid(job, 0, marker=str(path))
        pause_when_mid_epoch_checkpoint(rank_0, path, job, timeout=120)
        os.kill(rank_0, signal.SIGKILL)
        killed_at = time.time()
        _, stderr = job.communicate(timeout=ENDS_WITHIN_S)
    finally:
        if job.poll() is None:
            stop_job(job, job_marker)
    assert job.returncode != 0, stderr
    assert time.time() - killed_at < ENDS_WITHIN_S
    print(f"JOB-ENDED rank 0 killed: {time.time() - killed_at:.1f} s")
    interrupted = read_checkpoint(path)  # intact: the write is atomic, a kill mid-write leaves the previous one
    expected_checkpoint, expected_metrics = uninterrupted_digits
    final_step = expected_checkpoint["meta"]["trainer"]["step"]
    assert 0 < interrupted["meta"]["trainer"]["step"] < final_step, "the kill came after the run had finished"
    assert interrupted["meta"]["trainer"]["batch"] > 0, "the kill should come inside an epoch"

    run_mpi(TRAIN_DIGITS, 2, *DIGITS_ARGUMENTS, "--checkpoint", str(path), "--resume", str(path),
            "--metrics-out", metrics, timeout=180)
    resumed = read_checkpoint(path)
    assert resumed["meta"]["trainer"]["step"] == final_step
    for name, expected in expected_checkpoint["model"].items():
        numpy.testing.assert_array_equal(resumed["model"][name], expected, err_msg=name)
    assert metrics_records(metrics) == expected_metrics


def pause_when_mid_epoch_checkpoint(pid, path, job, timeout):
    """Stop process `pid` (SIGSTOP) at a moment when the checkpoint at `path` was written inside an epoch.

    The process writes the checkpoints, so none changes while it is stopped: however fast training runs,
    the checkpoint read here is the one a kill leaves.
    """
    deadline = time.monotonic() + timeout
    while True:
        assert job.poll() is None, f"the job ended (status {job.returncode}) before a checkpoint inside an epoch"
        assert time.monotonic() < deadline, f"no checkpoint inside an epoch at {path} after {timeout} s"
        os.kill(pid, signal.SIGSTOP)
        if read_checkpoint(path)["meta"]["trainer"]["batch"] > 0:
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.005)


def start_digits_until_checkpoint(ranks, path, timeout=120):
    """Start the digits example on `ranks` ranks, checkpointing to `path`; returns (job, marker) once its first
    checkpoint is there."""
    def not_ready(started):
        deadline = time.monotonic() + timeout
        while not Path(path).exists():
            if started[0].poll() is not None or time.monotonic() > deadline:
                return f"no checkpoint at {path} after {timeout} s (the job's status: {started[0].poll()})"
            time.sleep(0.05)

    return start_until_ready(lambda: start_mpi_job(TRAIN_DIGITS, ranks, *DIGITS_ARGUMENTS, "--checkpoint", str(path)),
                             not_ready, lambda started: stop_job(*started))


def rank_pid(job, rank, marker):
    """The process id of MPI rank `rank` of `job`: a process whose command line holds `marker`, with its
    launcher's rank variable (PMI_RANK, OMPI_COMM_WORLD_RANK, ...) equal to `rank`."""
    if not Path("/proc/self/environ").exists():
        pytest.skip("finding a rank's process needs Linux's /proc")
    for variable in RANK_VARIABLES:
        for pid in processes_with(variable, str(rank)):
            if marker in command_line(pid):
                return pid
    raise AssertionError(f"no process of rank {rank} found for job {job.pid}")


# --- preemption ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def uninterrupted_digits_on_4_ranks(tmp_path_factory):
    return uninterrupted_run(tmp_path_factory, ranks=4, timeout=240)


def preempt_then_resume(tmp_path, ranks, signum, only_rank, expected):
    """Signal the job (mpiexec, or one rank's process) mid-training; it must checkpoint and exit 75, then resume."""
    path, metrics = tmp_path / "digits.npz", tmp_path / "metrics.jsonl"
    job, marker = start_digits_until_checkpoint(ranks, path)
    with stopped_at_the_end(job, marker):
        rank_0 = rank_pid(job, 0, marker=str(path))
        pause_when_mid_epoch_checkpoint(rank_0, path, job, timeout=120)  # so the signal comes before the end
        os.kill(job.pid if only_rank is None else rank_pid(job, only_rank, marker=str(path)), signum)
        os.kill(rank_0, signal.SIGCONT)
        since = time.monotonic()
        _, stderr = job.communicate(timeout=ENDS_WITHIN_S)
        took = seconds_until_the_job_ends(job, marker, since)
    assert job.returncode == 75, stderr
    assert took < ENDS_WITHIN_10_S
    name = signal.Signals(signum).name
    assert re.search(rf"rank 0: preempted by {name}: stopped after step \d+ and wrote checkpoint "
                     rf"{re.escape(str(path))}", stderr), stderr
    expected_checkpoint, expected_metrics = expected
    final_step = expected_checkpoint["meta"]["trainer"]["step"]
    assert 0 < read_checkpoint(path)["meta"]["trainer"]["step"] < final_step, "the signal came after the run ended"

    run_mpi(TRAIN_DIGITS, ranks, *DIGITS_ARGUMENTS, "--checkpoint", path, "--resume", path, "--metrics-out", metrics,
            timeout=240)
    resumed = read_checkpoint(path)
    assert resumed["meta"]["trainer"]["step"] == final_step
    for name, array in expected_checkpoint["model"].items():
        numpy.testing.assert_array_equal(resumed["model"][name], array, err_msg=name)
    assert metrics_records(metrics) == expected_metrics
    return took


def test_sigterm_to_mpiexec_preempts_4_ranks_and_the_resumed_run_equals_an_uninterrupted_one(
        tmp_path, uninterrupted_digits_on_4_ranks):
    if local_launcher().flavour != MPICH:
        pytest.skip("Open MPI's launcher ends its ranks on SIGTERM instead of forwarding it; preemption there "
                    "comes from the signal to the ranks (as Slurm sends it) or SIGUSR1, tested below")
    took = preempt_then_resume(tmp_path, 4, signal.SIGTERM, None, uninterrupted_digits_on_4_ranks)
    print(f"JOB-ENDED SIGTERM to mpiexec (preemption, 4 ranks): {took:.1f} s")


def test_sigusr1_to_one_rank_preempts_every_rank_and_the_resumed_run_equals_an_uninterrupted_one(
        tmp_path, uninterrupted_digits):
    took = preempt_then_resume(tmp_path, 2, signal.SIGUSR1, 1, uninterrupted_digits)
    print(f"JOB-ENDED SIGUSR1 to rank 1 (preemption, 2 ranks): {took:.1f} s")


# --- bad data, files and input -------------------------------------------------------------------------------------
def test_a_nan_batch_on_one_rank_is_skipped_by_every_rank_alike():
    result = run_mpi("nan_batch.py", 2, "skip", timeout=90)
    reports = re.findall(r"NAN-SKIP rank=(\d) skipped=(\[[0-9, ]+\]) weights_crc32=(\d+)", result.stdout)
    assert sorted(rank for rank, _, _ in reports) == ["0", "1"], result.stdout
    assert {skipped for _, skipped, _ in reports} == {"[1, 1]"}, result.stdout  # once in each of 2 epochs
    assert len({digest for _, _, digest in reports}) == 1, result.stdout  # the same weights on both ranks


def test_a_nan_batch_ends_the_job_naming_the_step_rank_and_layer():
    result = run_mpi("nan_batch.py", 2, "raise", check=False, timeout=90)
    finished = time.time()
    assert result.returncode != 0, result.stdout + result.stderr
    assert re.search(r"NonFiniteError: step 3 \(epoch 1, batch 3\) on rank \d: the model's output or loss holds "
                     r"NaN or Inf, first in the input batch", result.stderr), result.stderr
    assert seconds_since_marker(result, "TRAINING-STARTS", finished) < ENDS_WITHIN_S


def test_a_training_loader_with_uneven_shards_fails_at_once_instead_of_hanging():
    started = time.monotonic()
    result = run_mpi("trainer_uneven.py", 2, check=False, timeout=90)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "ValueError: train_loader shards 9 samples over 2 ranks with uneven='keep'" in result.stderr, output
    assert "use uneven='pad' or 'drop' for training" in result.stderr, output
    print(f"JOB-ENDED uneven training loader: {time.monotonic() - started:.1f} s from the start")


def can_make_mount_namespaces():
    """Whether `unshare -m` works here (Linux, and the right to mount: root)."""
    return (sys.platform.startswith("linux") and shutil.which("unshare") is not None
            and subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0)


@pytest.mark.skipif(not can_make_mount_namespaces(), reason="needs `unshare -m` (root on Linux) to mount a tiny disk")
def test_a_full_disk_ends_the_job_with_one_error_naming_the_checkpoint(tmp_path):
    """The checkpoint folder is an 8 KiB tmpfs in a mount namespace of this test's own."""
    require("sklearn")
    folder = tmp_path / "full"
    folder.mkdir()
    mount_then_run = f'mount -t tmpfs -o size=8k tmpfs "{folder}" && exec "$0" "$@"'
    command = ["unshare", "-m", "sh", "-c", mount_then_run, *mpiexec_command(2, sys.executable, str(TRAIN_DIGITS)), "--epochs", "1", "--hidden", "32", "--quiet", "--checkpoint", str(folder / "d.npz")]
    started = time.monotonic()
    result = run_bounded(command, 120, env=mpi_env(), cwd=REPOSITORY_ROOT)
    assert result.returncode != 0, result.stdout + result.stderr
    assert result.stderr.count("Errno 28") == 1, result.stderr
    assert f"OSError: [Errno 28] cannot write checkpoint {folder / 'd.npz'}: No space left on device" in result.stderr
    print(f"JOB-ENDED full disk: {time.monotonic() - started:.1f} s from the start")
