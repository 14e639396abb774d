"""Launcher: the installed mpiexec (or srun), its flavour and this node's cores, turning RunOptions into a started job."""
from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, replace

from mpiprop.launch.job_processes import DEFAULT_GRACE_S, exit_status, run_whole_job
from mpiprop.launch.mpiexec import (AUTO, RunOptions, build_command, choose_launcher, count_hosts, launch_warnings,
                                    launcher_prefix)


def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS tells it, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


FINISH_MARKS_VARIABLE = "MPIPROP_FINISH_MARKS"  # read by mpiprop.distributed's finish marks on each rank


class JobFailed(RuntimeError):
    """An MPI job exited with a non-zero status."""


@dataclass(frozen=True)
class Launcher:
    """Everything `build_command` needs that comes from this machine rather than from the user."""

    mpiexec: str
    flavour: str
    python: str
    cores: int
    as_root: bool = False

    @classmethod
    def detect(cls, requested: str = AUTO) -> Launcher:
        """Find the launcher (see `choose_launcher`), tell its flavour, count cores, and see whether we are root.

        Raises:
            FileNotFoundError: when no launcher is installed.
        """
        launcher, flavour = choose_launcher(requested)
        return cls(mpiexec=launcher, flavour=flavour, python=sys.executable, cores=available_cores(),
                   as_root=os.geteuid() == 0)

    def prefix(self, ranks: int) -> list[str]:
        """`mpiexec -n ranks` with the flags this machine's MPI needs, for a program run under plain mpiexec."""
        return launcher_prefix(self.mpiexec, self.flavour, ranks, cores=self.cores, as_root=self.as_root)

    def hosts(self, options: RunOptions) -> int:
        """Hosts named in the options' hostfile (1 without one).

        Raises:
            FileNotFoundError: when the hostfile does not exist.
        """
        if options.hostfile is None:
            return 1
        if not os.path.isfile(options.hostfile):
            raise FileNotFoundError(f"hostfile {options.hostfile!r} does not exist; give a file listing one host "
                                    "per line (MPICH: `host:slots`, Open MPI: `host slots=N`)")
        with open(options.hostfile) as handle:
            return count_hosts(handle.read())

    def command(self, options: RunOptions) -> list[str]:
        """The exact mpiexec command line for `options` on this machine."""
        self.hosts(options)  # a missing hostfile is reported before anything runs
        return build_command(options, mpiexec=self.mpiexec, flavour=self.flavour, python=self.python,
                             cores=self.cores, as_root=self.as_root)

    def warnings(self, options: RunOptions) -> list[str]:
        """Advice about `options` on this machine (ranks sharing GPUs)."""
        return launch_warnings(options, self.hosts(options))

    def run(self, options: RunOptions, timeout: float | None = None, grace: float = DEFAULT_GRACE_S) -> int:
        """Run the job with its output on this terminal; returns its exit status (128 + N when mpiexec died of signal N).

        SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 are passed on to the job, which then has
        `grace` seconds to end by itself (a preempted Trainer checkpoints and exits with status
        75, which is returned); only then is the whole job killed.

        On one node, each rank leaves a mark in a temporary folder when its program ends
        normally; a job that MPICH reports as successful although some rank left no mark (it
        called `os._exit` or was killed, and MPICH ended the others) returns 1 instead, with a
        line naming the ranks.

        Raises:
            JobInterrupted: when the job outlived `grace` seconds after a signal and was killed
                (uncaught, it exits with status 128 + the signal's number).
            subprocess.TimeoutExpired: past `timeout` seconds, once the whole job has been stopped.
        """
        if options.hostfile is not None:  # the marks would be written on other nodes' disks
            return self._run_on_terminal(self.command(options), timeout, grace)
        with tempfile.TemporaryDirectory(prefix="mpiprop-finish-marks-") as folder:
            marked = replace(options, environment=(*options.environment, (FINISH_MARKS_VARIABLE, folder)))
            status = self._run_on_terminal(self.command(marked), timeout, grace)
            unfinished = unmarked_ranks(folder, options.ranks)
        if status == 0 and unfinished:
            print(f"mpiprop run: rank{'s' if len(unfinished) > 1 else ''} {', '.join(map(str, unfinished))} of "
                  f"{options.ranks} ended without finishing the program (os._exit, or killed; MPICH then ends the "
                  "others and reports success); exiting with status 1", file=sys.stderr)
            return 1
        return status

    def _run_on_terminal(self, command: list[str], timeout: float | None, grace: float) -> int:
        completed = run_whole_job(command, timeout, capture=False, grace=grace, flavour=self.flavour)
        return exit_status(completed.returncode)

    def run_captured(self, options: RunOptions, timeout: float | None = None) -> str:
        """Run the job and return its standard output.

        Raises:
            JobFailed: when it exits non-zero (the message holds the end of its output).
            subprocess.TimeoutExpired: when it runs past `timeout` seconds.
            JobInterrupted: on SIGTERM, SIGHUP, SIGINT, SIGUSR1 or SIGUSR2, once the whole job has been stopped.
        """
        completed = run_whole_job(self.command(options), timeout)
        if completed.returncode != 0:
            tail = (completed.stdout + completed.stderr)[-3000:]
            raise JobFailed(f"`{' '.join(self.command(options))}` exited with status {completed.returncode}:\n{tail}")
        return completed.stdout


def unmarked_ranks(folder: str, ranks: int) -> list[int]:
    """The ranks below `ranks` that left no finish mark (FOLDER/rank-R) in `folder`."""
    return [rank for rank in range(ranks) if not os.path.exists(os.path.join(folder, f"rank-{rank}"))]
