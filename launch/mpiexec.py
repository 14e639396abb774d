"""Finding the launcher (`mpiexec`, or Slurm's `srun`), telling its flavour, and building its command line (pure)."""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from mpiprop.launch.launcher_variables import launcher_environment

MPICH = "mpich"  # MPICH's hydra, and hydra-based MPIs (Intel MPI, MVAPICH)
OPENMPI = "openmpi"
SRUN = "srun"  # Slurm's srun, inside an allocation
FLAVOURS = (MPICH, OPENMPI, SRUN)
AUTO, MPIEXEC = "auto", "mpiexec"
LAUNCHER_CHOICES = (AUTO, MPIEXEC, SRUN)
# Open MPI's UCX one-sided component prints an error for every window where UCX finds no network; shared
# windows come from its `sm` component anyway (see mpiprop.distributed.data_parallel.bucket_allreduce_shared)
OPENMPI_WITHOUT_UCX_WINDOWS = ("--mca", "osc", "^ucx")

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
        threads_per_rank: BLAS/OpenMP threads per rank; None leaves them to each rank's
            `mpiprop.distributed.start()` (its node's cores divided by the ranks on the node).
        trace: path of a Chrome trace to record (sets MPIPROP_TRACE on every rank).
        stall_timeout: seconds one communication may wait before the stall watchdog aborts the
            job (sets MPIPROP_STALL_TIMEOUT on every rank); None leaves the watchdog off.
        environment: further (name, value) pairs given to every rank.
        launcher_arguments: further arguments for the launcher, placed after mpiprop's own flags
            (e.g. `("--bind-to", "core")` for Open MPI).
    """

    ranks: int
    program: list[str] = field(default_factory=list)
    hostfile: str | None = None
    gpus_per_node: int | None = None
    threads_per_rank: int | None = None
    trace: str | None = None
    stall_timeout: float | None = None
    environment: tuple[tuple[str, str], ...] = ()
    launcher_arguments: tuple[str, ...] = ()

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


def choose_launcher(requested: str = AUTO, environ: Mapping[str, str] | None = None,
                    python: str = sys.executable) -> tuple[str, str]:
    """The launcher to call and its flavour.

    Args:
        requested: SRUN, MPIEXEC, or AUTO: srun inside a Slurm allocation where `srun` is on PATH, else mpiexec.
        environ: the environment to look for an allocation in (os.environ by default).
        python: the interpreter beside which `mpiexec` is looked for first.

    Returns:
        (path, flavour), the flavour one of FLAVOURS.

    Raises:
        FileNotFoundError: when the launcher asked for (or, for AUTO, any) is not installed.
        ValueError: for an unknown `requested`.
    """
    if requested not in LAUNCHER_CHOICES:
        raise ValueError(f"unknown launcher {requested!r}; expected one of {LAUNCHER_CHOICES}")
    srun = shutil.which("srun")
    if requested == SRUN and srun is None:
        raise FileNotFoundError("--launcher srun was asked for, but no srun is on PATH; run inside a Slurm "
                                "allocation, or choose --launcher mpiexec")
    inside_allocation = launcher_environment().inside_slurm_allocation(os.environ if environ is None else environ)
    if requested == SRUN or (requested == AUTO and srun is not None and inside_allocation):
        return srun, SRUN
    mpiexec = find_mpiexec(python)
    return mpiexec, detect_flavour(mpiexec)


def count_hosts(hostfile_text: str) -> int:
    """Number of hosts listed in a hostfile (one per non-blank, non-comment line; MPICH and Open MPI syntax)."""
    lines = (line.split("#", 1)[0].strip() for line in hostfile_text.splitlines())
    return sum(1 for line in lines if line)


def ranks_per_node(ranks: int, hosts: int) -> int:
    """Ranks on the busiest node when `ranks` are spread evenly over `hosts`."""
    return math.ceil(ranks / max(hosts, 1))


def launch_environment(options: RunOptions) -> list[tuple[str, str]]:
    """The environment variables every rank is given, in command-line order.

    Threads per rank only when asked for: otherwise `mpiprop.distributed.start()` on each rank sets
    them from its node's cores and ranks, the same under `mpiprop run` as under plain mpiexec or srun.
    """
    variables = []
    if options.threads_per_rank is not None:
        variables += [(name, str(options.threads_per_rank)) for name in BLAS_THREAD_VARIABLES]
    if options.gpus_per_node is not None:
        variables.append((GPUS_PER_NODE_VARIABLE, str(options.gpus_per_node)))
    if options.trace is not None:
        variables.append((TRACE_VARIABLE, options.trace))
    if options.stall_timeout is not None:
        variables.append((STALL_TIMEOUT_VARIABLE, f"{options.stall_timeout:g}"))
    return variables + [(name, value) for name, value in options.environment]


def launcher_prefix(launcher: str, flavour: str, ranks: int, *, cores: int, hostfile: str | None = None,
                    as_root: bool = False, arguments: Sequence[str] = ()) -> list[str]:
    """The launcher's part of a command line: `mpiexec -n N` and the flags its flavour needs, before the program.

    Args:
        launcher: path of `mpiexec` (or `srun`).
        flavour: MPICH (hydra: `-f HOSTFILE`), OPENMPI (`--hostfile`, `--oversubscribe` when the ranks
            exceed this node's cores, `--allow-run-as-root` as root, and OPENMPI_WITHOUT_UCX_WINDOWS)
            or SRUN (Slurm chooses the hosts).
        ranks: number of processes.
        cores: cores on this node.
        hostfile: file naming the hosts, or None for this node alone.
        as_root: whether the job is started by root (Open MPI refuses that unless told).
        arguments: the user's further launcher arguments, placed last.

    Returns:
        The argument list up to the program.

    Raises:
        ValueError: for an unknown flavour, or a hostfile given to srun.
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown MPI flavour {flavour!r}; expected one of {FLAVOURS}")
    command = [launcher, "-n", str(ranks)]
    if flavour == SRUN and hostfile is not None:
        raise ValueError(f"--hostfile {hostfile} cannot be used with srun: Slurm's allocation chooses the hosts "
                         "(ask for them with sbatch/salloc --nodes), or choose --launcher mpiexec")
    if flavour == MPICH and hostfile is not None:
        command += ["-f", hostfile]
    if flavour == OPENMPI:
        command += ["--hostfile", hostfile] if hostfile is not None else ["--oversubscribe"] if ranks > cores else []
        command += ["--allow-run-as-root"] if as_root else []
        command += OPENMPI_WITHOUT_UCX_WINDOWS
    return command + list(arguments)


def environment_flags(flavour: str, variables: Sequence[tuple[str, str]]) -> list[str]:
    """Launcher flags that give every rank `variables`: `-genv` (MPICH), `-x` (Open MPI), `--export` (srun).

    Raises:
        ValueError: for a value with a comma under srun (its `--export` list is comma-separated).
    """
    if flavour == MPICH:
        return [word for name, value in variables for word in ("-genv", name, value)]
    if flavour == OPENMPI:
        return [word for name, value in variables for word in ("-x", f"{name}={value}")]
    with_comma = [f"{name}={value}" for name, value in variables if "," in value]
    if with_comma:
        raise ValueError(f"srun cannot pass {with_comma[0]!r} to the ranks: its --export list is separated by "
                         "commas; choose a value without one")
    return [f"--export={','.join(['ALL', *(f'{name}={value}' for name, value in variables)])}"] if variables else []


def build_command(options: RunOptions, *, mpiexec: str, flavour: str, python: str, cores: int,
                  as_root: bool = False) -> list[str]:
    """The exact launcher command line for `options`.

    Args:
        options: what to run and how.
        mpiexec: path of the launcher to call (`mpiexec`, or `srun` for SRUN).
        flavour: MPICH, OPENMPI or SRUN (see `launcher_prefix` and `environment_flags`).
        python: the interpreter every rank runs.
        cores: cores on this node.
        as_root: whether the job is started by root.

    Returns:
        The argument list, ready for `subprocess.run` or `os.execv`.

    Raises:
        ValueError: for an unknown flavour, or options the flavour cannot express.
    """
    command = launcher_prefix(mpiexec, flavour, options.ranks, cores=cores, hostfile=options.hostfile,
                              as_root=as_root, arguments=options.launcher_arguments)
    return command + environment_flags(flavour, launch_environment(options)) + [python, "-m", BOOTSTRAP_MODULE,
                                                                                *options.program]


def launch_warnings(options: RunOptions, hosts: int = 1) -> list[str]:
    """Advice about a launch that will run but badly: ranks sharing GPUs.

    (More ranks than cores is reported by the ranks themselves, from the cores MPI places them on.)
    """
    per_node = ranks_per_node(options.ranks, hosts)
    warnings = []
    if options.gpus_per_node is not None and per_node > options.gpus_per_node:
        warnings.append(f"{per_node} ranks per node share {options.gpus_per_node} GPU(s), so several ranks use "
                        "the same GPU; use -n equal to the GPUs per node times the nodes")
    return warnings
