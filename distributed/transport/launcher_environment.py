"""What MPI launchers and Slurm tell each process in its environment, read without MPI (nothing here imports mpi4py).

`mpiprop.launch.bootstrap` must choose a GPU before MPI starts (a CUDA-aware MPI may start CUDA),
so it loads this file on its own (see `mpiprop.launch.launcher_variables`); after MPI has started,
`mpiprop.distributed.transport.world` checks these variables against MPI's own placement.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class LauncherVariables:
    """The names of the variables one launcher sets on every process it starts."""

    launcher: str
    rank: str
    local_rank: str


HYDRA = LauncherVariables("MPICH's Hydra (also Intel MPI)", "PMI_RANK", "MPI_LOCALRANKID")
OPEN_MPI = LauncherVariables("Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK")
MVAPICH = LauncherVariables("MVAPICH", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_LOCAL_RANK")
SLURM = LauncherVariables("Slurm's srun", "SLURM_PROCID", "SLURM_LOCALID")
# MPI launchers first: an mpirun inside a Slurm batch script hands the batch step's SLURM_PROCID=0 and
# SLURM_LOCALID=0 down to every rank it starts.
LAUNCHERS = (HYDRA, OPEN_MPI, MVAPICH, SLURM)
PMIX_RANK = "PMIX_RANK"  # set by PMIx launchers (Open MPI 5's prterun, srun --mpi=pmix) beside their own
RANK_VARIABLES = tuple(launcher.rank for launcher in LAUNCHERS) + (PMIX_RANK,)
SLURM_JOB = "SLURM_JOB_ID"  # set inside a Slurm allocation (sbatch, salloc) and in every process srun starts


@dataclass(frozen=True)
class LocalRank:
    """A process's rank on its node as a launcher variable gives it."""

    value: int
    variable: str
    launcher: str


def _number(environ: Mapping[str, str], name: str) -> int | None:
    text = environ.get(name, "").strip()
    return int(text) if text.isdigit() else None


def launcher_local_rank(environ: Mapping[str, str]) -> LocalRank | None:
    """This process's rank on its node according to the launcher that started it, or None outside one.

    A launcher's local rank counts only when its rank variable is set and equals the rank variables
    of the launchers listed before it in LAUNCHERS and PMIX_RANK: a variable inherited from an outer
    launcher (the batch step's SLURM_PROCID=0 and SLURM_LOCALID=0 under mpirun) disagrees with the
    rank the inner launcher gave this process, and is passed over.

    Args:
        environ: the process environment (os.environ).

    Returns:
        The local rank with the variable it came from, or None when no launcher's variables agree.
    """
    pmix_rank = _number(environ, PMIX_RANK)
    earlier_ranks = {pmix_rank} - {None}
    for launcher in LAUNCHERS:
        local, rank = _number(environ, launcher.local_rank), _number(environ, launcher.rank)
        if local is not None and rank is not None and earlier_ranks <= {rank}:
            return LocalRank(local, launcher.local_rank, launcher.launcher)
        earlier_ranks |= {rank} - {None}
    return None


def inside_slurm_allocation(environ: Mapping[str, str]) -> bool:
    """True inside a Slurm allocation (a batch script, salloc, or a process srun started)."""
    return bool(environ.get(SLURM_JOB, "").strip())
