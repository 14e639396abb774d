"""Finding the installed `mpiexec`, telling its flavour, and building its command line (a pure function)."""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

MPICH = "mpich"  # MPICH's hydra, and hydra-based MPIs (Intel MPI, MVAPICH)
OPENMPI = "openmpi"
FLAVOURS = (MPICH, OPENMPI)

BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
GPUS_PER_NODE_VARIABLE = "MPIPROP_GPUS_PER_NODE"
TRACE_VARIABLE = "MPIPROP_TRACE"
STALL_TIMEOUT_VARIABLE = "MPIPROP_STALL_TIMEOUT"
BOOTSTRAP_MODULE = "mpiprop.launch.bootstrap"


@dataclass(frozen=True)
class RunOptions:
    """What `mpiprop run` was asked to do.

    Attributes:
        ranks: number of MPI processes (`-n`).
        program: the script and its arguments (`["train.py", "--epochs", "3"]`), or
            `["-m", "package.module", ...]` to run a module.
        hostfile: file naming the hosts, for runs across nodes.
        gpus_per_node: bind each rank to GPU `local_rank % gpus_per_node` when given.
        threads_per_rank: BLAS/OpenMP threads per rank; None means cores divided by ranks per node.
        trace: path of a Chrome trace to record (sets MPIPROP_TRACE on every rank).
        stall_timeout: seconds one communication may wait before the stall watchdog aborts the
            job (sets MPIPROP_STALL_TIMEOUT on every rank); None leaves the watchdog off.
        environment: further (name, value) pairs given to every rank.
    """

    ranks: int
    program: list[str] = field(default_factory=list)
    hostfile: str | None = None
    gpus_per_node: int | None = None
    threads_per_rank: int | None = None
    trace: str | None = None
    stall_timeout: float | None = None
    environment: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        _check_positive(self.ranks, "-n (number of ranks)")
        if self.gpus_per_node is not None:
            _check_positive(self.gpus_per_node, "--gpus-per-node")
        if self.threads_per_rank is not None:
            _check_positive(self.threads_per_rank, "--threads-per-rank")
        if self.stall_timeout is not None and not self.stall_timeout > 0:
            raise ValueError(f"--stall-timeout must be a positive number of seconds, got {self.stall_timeout!r}")
        if not self.program or self.program == ["-m"]:
            raise ValueError("no script to run; give one, e.g. `mpiprop run -n 2 train.py`")


def _check_positive(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def find_mpiexec(python: str = sys.executable) -> str:
    """Locate `mpiexec`: $MPIPROP_MPIEXEC, then beside `python` (where the pip `mpich` wheel puts it), then PATH.

    Raises:
        FileNotFoundError: when no `mpiexec` or `mpirun` can be found.
    """
    override = os.environ.get("MPIPROP_MPIEXEC")
    if override:
        return override
    beside_python = os.path.join(os.path.dirname(python), "mpiexec")
    if os.access(beside_python, os.X_OK):
        return beside_python
    for name in ("mpiexec", "mpirun"):
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError(
        f"no mpiexec found beside {python} or on PATH; install one (`pip install mpich`, or your system's "
        "MPICH/Open MPI) or set MPIPROP_MPIEXEC=/path/to/mpiexec")


def parse_flavour(version_text: str) -> str:
    """Tell the MPI flavour from the output of `mpiexec --version`: "openmpi", else "mpich" (hydra's flags)."""
    lowered = version_text.lower()
    if "open mpi" in lowered or "openrte" in lowered or "open-mpi" in lowered:
        return OPENMPI
    return MPICH


def detect_flavour(mpiexec: str) -> str:
    """Run `mpiexec --version` and tell its flavour (see `parse_flavour`)."""
    try:
        completed = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return MPICH
    return parse_flavour(completed.stdout + completed.stderr)


def count_hosts(hostfile_text: str) -> int:
    """Number of hosts listed in a hostfile (one per non-blank, non-comment line; MPICH and Open MPI syntax)."""
    lines = (line.split("#", 1)[0].strip() for line in hostfile_text.splitlines())
    return sum(1 for line in lines if line)


def ranks_per_node(ranks: int, hosts: int) -> int:
    """Ranks on the busiest node when `ranks` are spread evenly over `hosts`."""
    return math.ceil(ranks / max(hosts, 1))


def threads_per_rank(options: RunOptions, cores: int, hosts: int = 1) -> int:
    """The threads each rank gets: as asked, else this node's cores divided by its ranks (at least 1)."""
    if options.threads_per_rank is not None:
        return options.threads_per_rank
    return max(1, cores // ranks_per_node(options.ranks, hosts))


def launch_environment(options: RunOptions, cores: int, hosts: int = 1) -> list[tuple[str, str]]:
    """The environment variables every rank is given, in command-line order."""
    threads = str(threads_per_rank(options, cores, hosts))
    variables = [(name, threads) for name in BLAS_THREAD_VARIABLES]
    if options.gpus_per_node is not None:
        variables.append((GPUS_PER_NODE_VARIABLE, str(options.gpus_per_node)))
    if options.trace is not None:
        variables.append((TRACE_VARIABLE, options.trace))
    if options.stall_timeout is not None:
        variables.append((STALL_TIMEOUT_VARIABLE, f"{options.stall_timeout:g}"))
    return variables + [(name, value) for name, value in options.environment]


def build_command(options: RunOptions, *, mpiexec: str, flavour: str, python: str, cores: int,
                  hosts: int = 1) -> list[str]:
    """The exact `mpiexec` command line for `options`.

    Args:
        options: what to run and how.
        mpiexec: path of the `mpiexec` to call.
        flavour: "mpich" (hydra flags `-f`, `-genv NAME VALUE`) or "openmpi" (`--hostfile`, `-x NAME=VALUE`).
        python: the interpreter every rank runs.
        cores: cores on this node (for the default threads per rank).
        hosts: hosts in the hostfile (1 without one).

    Returns:
        The argument list, ready for `subprocess.run` or `os.execv`.

    Raises:
        ValueError: for an unknown flavour.
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown MPI flavour {flavour!r}; expected one of {FLAVOURS}")
    command = [mpiexec, "-n", str(options.ranks)]
    if options.hostfile is not None:
        command += ["-f", options.hostfile] if flavour == MPICH else ["--hostfile", options.hostfile]
    elif flavour == OPENMPI and options.ranks > cores:
        command.append("--oversubscribe")
    for name, value in launch_environment(options, cores, hosts):
        command += ["-genv", name, value] if flavour == MPICH else ["-x", f"{name}={value}"]
    return command + [python, "-m", BOOTSTRAP_MODULE, *options.program]


def launch_warnings(options: RunOptions, cores: int, hosts: int = 1) -> list[str]:
    """Advice about a launch that will run but badly: more ranks than cores, or ranks sharing GPUs."""
    per_node = ranks_per_node(options.ranks, hosts)
    warnings = []
    if per_node > cores:
        warnings.append(f"{per_node} ranks per node on {cores} cores: the node is oversubscribed and every rank "
                        "will run slower; use fewer ranks or more nodes (--hostfile)")
    if options.gpus_per_node is not None and per_node > options.gpus_per_node:
        warnings.append(f"{per_node} ranks per node share {options.gpus_per_node} GPU(s), so several ranks use "
                        "the same GPU; use -n equal to the GPUs per node times the nodes")
    return warnings
